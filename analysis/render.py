"""Render ntk_compare result directories into paper-style markdown tables and a plot.

    python analysis/render.py results/ntk_compare/minilm-1a2b3c4d [MORE_DIRS...] [--out DIR]

Writes DIR/summary.md (one table per run, plus a side-by-side table of the relative
NTK errors when several runs are given) and DIR/summary.png (bar charts, one colour
per run); prints the markdown. DIR defaults to the first result directory.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ntkfuse.experiments.compare import KERNEL_KINDS, CompareError, describe, format_table, load_result, plot
from ntkfuse.files import atomic_write


def label(result: dict) -> str:
    c = result["config"]
    return f"{Path(str(c['model']).rstrip('/')).name} ({result['data']['spec']})"


def side_by_side(results, labels) -> str:
    """Methods as rows, one column per run and measure: the layout of the paper's tables."""
    measures = [(f"{k}_rel", "NTK rel" if k == "ntk" else "sign NTK rel") for k in KERNEL_KINDS]
    measures += [("out_err_layer", "out err")]
    head = ["method"] + [f"{lab}: {name}" for lab in labels for _, name in measures]
    methods = []
    for r in results:
        methods += [row["method"] for row in r["results"] if row["method"] not in methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for m in methods:
        cells = [m]
        for r in results:
            row = next((x for x in r["results"] if x["method"] == m), {})
            cells += ["-" if row.get(key) is None else f"{row[key]:.4g}" for key, _ in measures]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(dirs, out=None) -> str:
    results = [load_result(d) for d in dirs]
    labels = [label(r) for r in results]
    parts = ["# NTK comparison of MLP compression methods\n"]
    for r, lab in zip(results, labels):
        parts.append(f"## {lab}\n\n{describe(r)}\n\n{format_table(r, markdown=True)}\n")
    if len(results) > 1:
        parts.append(f"## Side by side\n\n{side_by_side(results, labels)}\n")
    text = "\n".join(parts)
    first = Path(dirs[0])
    out = Path(out) if out else (first.parent if first.is_file() else first)
    atomic_write(out / "summary.md", text)
    plot(results, out / "summary.png", labels)
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
