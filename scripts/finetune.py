#!/usr/bin/env python
"""Fine-tune the full model and compressed models on a task; write a paper-style table.

    python scripts/finetune.py                          # MiniLM, sentiment sample, CPU, minutes
    python scripts/finetune.py --recipe analysis/recipes/finetune_roberta_sst2.py
    python scripts/finetune.py --help

The work is `ntkfuse.experiments.finetune`; see docs/finetune.md.
"""
import sys

from ntkfuse.cli import finetune_main

if __name__ == "__main__":
    sys.exit(finetune_main())
