#!/usr/bin/env python
"""Fit surrogate MLPs for chosen layers of a model and report what fitting buys.

    python scripts/fit_surrogates.py                       # MiniLM, sentiment sample, layers 2-5, width 384
    python scripts/fit_surrogates.py --kinds linear,bottleneck-fusion --steps 300 --out runs/fit
    python scripts/fit_surrogates.py --model path/to/llama   # decoder defaults: webnlg, NTK of the target log-prob
    python scripts/fit_surrogates.py --help                # every flag and every file written

The work is `ntkfuse.experiments.surrogates`; see docs/surrogates.md.
"""
import sys

from ntkfuse.cli import fit_surrogates_main

if __name__ == "__main__":
    sys.exit(fit_surrogates_main())
