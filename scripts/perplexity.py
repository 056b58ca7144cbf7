#!/usr/bin/env python
"""Perplexity of a decoder LM on a local text file, for the original and each compressed model.

    python scripts/perplexity.py --model gpt2 --text wiki.test.raw
    python scripts/perplexity.py --model gpt2 --text wiki.test.raw --methods fusion,prune --layers 4-11 --width 768
    python scripts/perplexity.py --help

The work is `ntkfuse.experiments.perplexity` (the measure: `ntkfuse.eval.perplexity`); see
docs/perplexity.md.
"""
import sys

from ntkfuse.cli import perplexity_main

if __name__ == "__main__":
    sys.exit(perplexity_main())
