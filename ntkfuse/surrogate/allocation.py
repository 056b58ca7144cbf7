"""Per-layer width allocation under a total MLP parameter budget (METHOD.md §4).

Input: for each layer, a list of options (width, params, loss) — typically singleton
sensitivities (one layer replaced at a time) plus the uncompressed block at loss 0.
Losses are assumed additive across layers. Two solvers:
- `greedy`: start from each layer's cheapest option, repeatedly take the upgrade with
  the largest loss reduction per added parameter that still fits;
- `knapsack`: exact multiple-choice knapsack by dynamic programming over the budget
  in units of the gcd of the costs (exact); if that grid is too large, costs are
  rounded *up* to a coarser grid (always feasible, flagged `exact=False`).
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Mapping, Sequence

import numpy as np


class AllocationError(ValueError):
    """Bad options or an infeasible budget."""


@dataclasses.dataclass(frozen=True)
class Option:
    width: int
    params: int
    loss: float


@dataclasses.dataclass(frozen=True)
class Plan:
    widths: dict            # layer -> width
    params: int             # total parameters of the chosen options
    loss: float             # total (summed) loss
    budget: int
    solver: str
    exact: bool = True

    def to_dict(self) -> dict:
        return {"solver": self.solver, "budget": self.budget, "params": self.params, "loss": self.loss,
                "exact": self.exact, "widths": {str(k): v for k, v in self.widths.items()}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self, options: Mapping[int, Sequence[Option]]) -> str:
        """Markdown table: layer, chosen width, params, loss."""
        rows = ["| layer | width | params | loss |", "|---:|---:|---:|---:|"]
        opts = _norm(options)
        for l in sorted(self.widths):
            o = next(o for o in opts[l] if o.width == self.widths[l])
            rows.append(f"| {l} | {o.width} | {o.params} | {o.loss:.6g} |")
        rows.append(f"| total | | {self.params} / {self.budget} | {self.loss:.6g} |")
        return "\n".join(rows)


def _norm(options) -> dict:
    out = {}
    for l, opts in options.items():
        opts = [o if isinstance(o, Option) else Option(*o) for o in opts]
        if not opts:
            raise AllocationError(f"layer {l} has no options")
        for o in opts:
            if o.params < 0 or int(o.params) != o.params:
                raise AllocationError(f"layer {l}: parameter counts must be non-negative integers, got {o.params}")
            if not math.isfinite(o.loss):
                raise AllocationError(f"layer {l}: loss must be finite, got {o.loss}")
        out[int(l)] = opts
    if not out:
        raise AllocationError("no layers to allocate")
    return out


def _check_budget(opts, budget):
    least = sum(min(o.params for o in v) for v in opts.values())
    if budget < least:
        raise AllocationError(f"budget {budget} is below the cheapest plan ({least} parameters)")


def _plan(opts, pick, budget, solver, exact=True) -> Plan:
    chosen = {l: opts[l][i] for l, i in pick.items()}
    return Plan({l: o.width for l, o in sorted(chosen.items())}, int(sum(o.params for o in chosen.values())),
                float(sum(o.loss for o in chosen.values())), int(budget), solver, exact)


def greedy(options: Mapping[int, Sequence], budget: int) -> Plan:
    opts = _norm(options)
    _check_budget(opts, budget)
    pick = {l: min(range(len(v)), key=lambda i: (v[i].params, v[i].loss)) for l, v in opts.items()}
    used = sum(opts[l][i].params for l, i in pick.items())
    while True:
        best = None
        for l, v in opts.items():
            cur = v[pick[l]]
            for i, o in enumerate(v):
                extra = o.params - cur.params
                gain = cur.loss - o.loss
                if gain <= 0 or used + extra > budget:
                    continue
                ratio = gain / extra if extra > 0 else math.inf
                if best is None or ratio > best[0]:
                    best = (ratio, l, i, extra)
        if best is None:
            return _plan(opts, pick, budget, "greedy")
        _, l, i, extra = best
        pick[l] = i
        used += extra


def knapsack(options: Mapping[int, Sequence], budget: int, max_cells: int = 2_000_000) -> Plan:
    """Multiple-choice knapsack: minimise Σ loss subject to Σ params ≤ budget, one option per layer."""
    opts = _norm(options)
    _check_budget(opts, budget)
    layers = sorted(opts)
    base = {l: min(o.params for o in opts[l]) for l in layers}
    cap = int(budget - sum(base.values()))
    extras = [o.params - base[l] for l in layers for o in opts[l]]
    unit = math.gcd(*[int(e) for e in extras if e > 0]) if any(e > 0 for e in extras) else 1
    exact = True
    if (cap // unit + 1) * len(layers) > max_cells:
        unit = math.ceil((cap + 1) * len(layers) / max_cells)
        exact = False
    B = cap // unit
    inf = np.inf
    dp = np.zeros(B + 1)                       # dp[b]: min loss with extra cost ≤ b·unit
    back = np.zeros((len(layers), B + 1), np.int64)
    for j, l in enumerate(layers):
        new = np.full(B + 1, inf)
        arg = np.zeros(B + 1, np.int64)
        for i, o in enumerate(opts[l]):
            c = -(-(o.params - base[l]) // unit)   # ceil: never exceed the budget
            if c > B:
                continue
            cand = np.full(B + 1, inf)
            cand[c:] = dp[:B + 1 - c] + o.loss
            better = cand < new
            new = np.where(better, cand, new)
            arg = np.where(better, i, arg)
        dp, back[j] = new, arg
    pick, b = {}, B
    for j in range(len(layers) - 1, -1, -1):
        l = layers[j]
        i = int(back[j, b])
        pick[l] = i
        b -= -(-(opts[l][i].params - base[l]) // unit)
    return _plan(opts, pick, budget, "knapsack", exact)


def options_from_sensitivity(table: Mapping[int, Mapping[int, tuple]],
                             full: Mapping[int, tuple] | None = None) -> dict:
    """{layer: {width: (params, loss)}} plus, optionally, the uncompressed block
    {layer: (width, params)} at loss 0 → {layer: [Option]}."""
    out = {}
    for l, row in table.items():
        out[l] = [Option(int(w), int(p), float(v)) for w, (p, v) in sorted(row.items())]
        if full is not None and l in full:
            out[l].append(Option(int(full[l][0]), int(full[l][1]), 0.0))
    return out
