#!/usr/bin/env python
"""Compare compression methods by parameters, output error and NTK error.

    python scripts/ntk_compare.py                      # MiniLM, sentiment sample, every method
    python scripts/ntk_compare.py --recipe analysis/recipes/roberta_sst2.py
    python scripts/ntk_compare.py --help

See docs/ntk_compare.md. Same as the `ntkfuse-compare` console script.
"""
import sys

from ntkfuse.cli import compare_main

if __name__ == "__main__":
    sys.exit(compare_main())
