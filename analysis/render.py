"""Render ntk_compare result directories into paper-style markdown tables and a plot.

    python analysis/render.py results/ntk_compare/minilm-1a2b3c4d [MORE_DIRS...] [--out DIR]

Writes DIR/summary.md (each run's tables, mean ± std over seeds, and its verdicts, plus
a side-by-side table when several runs are given), DIR/summary.png (bar charts with
one-std error bars, one colour per run) and DIR/spectra_<i>.png (kernel eigenvalues of
run i); prints the markdown. DIR defaults to the first result directory. Result
directories written before seeds existed render as one-seed runs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ntkfuse.experiments.compare import (CompareError, describe, format_tables, load_result, plot, plot_spectra,
                                         side_by_side)
from ntkfuse.files import atomic_write


def label(result: dict) -> str:
    c = result["config"]
    proto = ", layer 0" if c.get("reference_protocol") else ""
    return f"{Path(str(c['model']).rstrip('/')).name} ({result['data']['spec']}{proto})"


def render(dirs, out=None) -> str:
    results = [load_result(d) for d in dirs]
    labels = [label(r) for r in results]
    parts = ["# NTK comparison of MLP compression methods\n"]
    for r, lab in zip(results, labels):
        parts.append(f"## {lab}\n\n{describe(r)}\n\n{format_tables(r, markdown=True)}\n")
    if len(results) > 1:
        parts.append(f"## Side by side\n\n{side_by_side(results, labels)}\n")
    text = "\n".join(parts)
    first = Path(dirs[0])
    out = Path(out) if out else (first.parent if first.is_file() else first)
    atomic_write(out / "summary.md", text)
    plot(results, out / "summary.png", labels)
    for i, r in enumerate(results):
        if any(k.endswith("_spectrum") for k in r.get("reference", {})):
            plot_spectra(r, out / f"spectra_{i}.png")
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", help="result directories (or results.json files) of ntk_compare")
    p.add_argument("--out", help="where summary.md and summary.png go (default: the first directory)")
    args = p.parse_args(argv)
    try:
        print(render(args.dirs, args.out))
    except (CompareError, OSError) as e:
        print(f"render: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
