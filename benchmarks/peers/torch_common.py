"""What the PyTorch peers share (no ntkfuse import): the layer syntax and CUDA syncing.
The peers run as scripts, so this sibling is imported by its bare name (their directory is
on sys.path)."""
from __future__ import annotations

import torch


def layer_list(text: str) -> list[int]:
    """"4-11" or "0,2,5" -> sorted layer indices."""
    out: set[int] = set()
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return sorted(out)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
