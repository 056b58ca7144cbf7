"""Writers of result files and tables: JSON, CSV, aligned text and markdown tables, and
bar plots. Text is returned (or written atomically with `ntkfuse.files.atomic_write`)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..files import atomic_write


def _jsonable(x):
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray) or type(x).__module__.startswith(("jax", "jaxlib")):
        return np.asarray(x).tolist()
    if isinstance(x, (tuple, set)):
        return list(x)
    return str(x)


def json_text(obj: Any, indent: int = 2) -> str:
    """Indented JSON ending in a newline; numpy/JAX scalars and arrays become numbers and lists."""
    return json.dumps(obj, indent=indent, sort_keys=False, default=_jsonable) + "\n"


def write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    """`json_text(obj)` written atomically to `path`."""
    atomic_write(path, json_text(obj, indent))


def read_json(path: str | Path):
    """The parsed file, or None when it is missing or not valid JSON (a cache miss, not an error)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def model_phrase(config: Mapping, *details) -> str:
    """'model NAME (family, L layers, d=…, D=…[, details…])': how every report's description names
    its model (`config` is a result's "config", with the resolved "model_config")."""
    mc = config["model_config"]
    parts = [mc["family"], f"{mc['num_layers']} layers", f"d={mc['hidden']}", f"D={mc['intermediate']}", *details]
    return f"model {config['model']} ({', '.join(map(str, parts))})"


def run_footer(result: Mapping) -> str:
    """The last sentence of every markdown report: when, which configuration, how long."""
    return f"Run {result['timestamp']}, config hash {result['config_hash']}, wall time {result['wall_s']:.1f} s."


def csv_text(rows: Sequence[Mapping], columns: Optional[Sequence] = None) -> str:
    """CSV of `rows` (dicts). `columns`: keys, or (key, header) pairs; default the first row's keys.
    Missing and None values are empty cells; lines end in '\\n'."""
    if columns is None:
        columns = list(rows[0]) if rows else []
    cols = [(c, c) if isinstance(c, str) else tuple(c) for c in columns]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([h for _, h in cols])
    for r in rows:
        w.writerow(["" if r.get(k) is None else r.get(k) for k, _ in cols])
    return buf.getvalue()


def markdown_table(head: Sequence[str], cells: Sequence[Sequence[str]], align: Optional[str] = None) -> str:
    """A markdown table. `align`: one character per column, 'l' or 'r' (default '---' everywhere)."""
    rule = ["---:" if a == "r" else "---" for a in align] if align else ["---" for _ in head]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in cells]
    return "\n".join(lines)


def text_table(head: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    """A console table: first column left-aligned, the others right-aligned, a dashed rule."""
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(head)]
    fmt = lambda r: "  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells])


def bar_panels(panels: Sequence[tuple], groups: Sequence[str], path: Optional[str | Path] = None, *,
               log_if_spread: float = 100.0, panel_size=(3.6, 3.4), ylabel: Optional[str] = None) -> bytes:
    """Grouped bar charts, one panel per measure, returned as PNG bytes (written atomically to `path`).

    panels: (title, series) pairs; series maps a label to one value per group (NaN: no bar),
    or to (values, errors) for error bars (e.g. a std over seeds); a list of (label, values)
    pairs also works (labels may then repeat). A panel whose positive
    values span more than `log_if_spread` gets a log axis, so one far-off bar keeps the
    others readable. A legend appears when a panel has more than one series."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(panel_size[0] * len(panels), panel_size[1]))
    axes = np.atleast_1d(axes)
    x = np.arange(len(groups))
    panels = [(t, list(s.items()) if isinstance(s, Mapping) else list(s)) for t, s in panels]
    n_series = max((len(s) for _, s in panels), default=1)
    for ax, (title, series) in zip(axes, panels):
        width = 0.8 / max(1, len(series))
        finite = []
        for j, (label, vals) in enumerate(series):
            err = None
            if isinstance(vals, tuple):
                vals, err = vals
            vals = np.asarray([np.nan if v is None else v for v in vals], float)
            ax.bar(x + (j - (len(series) - 1) / 2) * width, vals, width, label=label,
                   yerr=None if err is None else np.asarray(err, float), capsize=2 if err is not None else 0)
            finite += [v for v in vals if np.isfinite(v) and v > 0]
        if finite and max(finite) / min(finite) > log_if_spread:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(x, groups, rotation=45, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
        if ylabel:
            ax.set_ylabel(ylabel, fontsize=8)
    if n_series > 1:
        axes[0].legend(fontsize=7)
    return save_figure(fig, path)


def save_figure(fig, path=None) -> bytes:
    """PNG bytes of a finished matplotlib figure (closed afterwards); written atomically to
    `path` when given. The one place figures become files."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    if path is not None:
        atomic_write(path, buf.getvalue())
    return buf.getvalue()


__all__ = ["json_text", "write_json", "read_json", "csv_text", "markdown_table", "text_table", "bar_panels",
           "save_figure"]
