"""Spread over repeated runs: per-group mean and standard deviation of per-seed values,
and the rule that decides whether one group's lead is real or within the noise.

std is the sample standard deviation (ddof=1) over the seeds; a group with one value
(a deterministic method, or a single seed) has std 0. The lead rule (`leader`): the best
group leads only when its one-std interval does not touch any other's, i.e. for "lower
is better" mean_best + std_best < mean_other − std_other for every other group; every
group whose interval does touch the best one's is reported as tied with it.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std with ddof=1 (0 for a single value), count) of the finite values;
    (nan, nan, 0) when there are none."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def aggregate(rows: Sequence[Mapping], group: str, keys: Sequence[str]) -> list[dict]:
    """One dict per group (in first-appearance order): {group: name, n, <key>: mean,
    <key>_std: std, <key>_values: [per-row values]} for every key present in the rows."""
    order, by = [], {}
    for r in rows:
        g = r[group]
        if g not in by:
            order.append(g)
            by[g] = []
        by[g].append(r)
    out = []
    for g in order:
        rs = by[g]
        agg = {group: g, "n": len(rs)}
        for k in keys:
            vals = [r.get(k) for r in rs]
            if all(v is None for v in vals):
                continue
            m, s, _ = mean_std([np.nan if v is None else float(v) for v in vals])
            agg[k], agg[f"{k}_std"], agg[f"{k}_values"] = m, s, vals
        out.append(agg)
    return out


def leader(stats: Mapping[str, tuple[float, float]], lower_is_better: bool = True) -> tuple[str, list[str], bool]:
    """(best group, groups tied with it (best first, by mean), whether the best leads).

    `stats`: {group: (mean, std)}. The best has the lowest (highest) mean; another group
    is tied with it when their mean ± std intervals overlap (touching counts as overlap)."""
    items = [(g, m, s) for g, (m, s) in stats.items() if m is not None and math.isfinite(m)]
    if not items:
        raise ValueError("leader needs at least one group with a finite mean")
    sign = 1.0 if lower_is_better else -1.0
    items.sort(key=lambda t: sign * t[1])
    best, mb, sb = items[0]
    sb = 0.0 if not math.isfinite(sb) else sb
    tied = [best]
    for g, m, s in items[1:]:
        s = 0.0 if not math.isfinite(s) else s
        if sign * (m - mb) <= sb + s:   # the intervals overlap
            tied.append(g)
    return best, tied, len(tied) == 1


__all__ = ["mean_std", "aggregate", "leader"]
