"""Generic name-mapping helpers for the families' HF weight maps
(`Family.params_from_hf(cfg, tensors, take)`)."""
from __future__ import annotations

import re
from typing import Callable, Optional

import numpy as np

from .errors import CheckpointError


def canonical(tensors: dict[str, np.ndarray], prefixes: tuple) -> dict[str, np.ndarray]:
    """Drop the model prefix (the first of `prefixes` that matches) and legacy LayerNorm
    names (gamma/beta), so one family mapping serves every head."""
    out = {}
    for k, v in tensors.items():
        k = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k))
        for pre in prefixes:
            if k.startswith(pre):
                k = k[len(pre):]
                break
        out[k] = v
    return out


def _placeholder(shape) -> np.ndarray:
    """A zero array of `shape` that takes no memory (one element, broadcast): what a dry run or
    a missing / mis-shaped weight gives the family's map, whatever the tensor's size."""
    return np.broadcast_to(np.zeros((), np.float32), tuple(shape))


class Taker:
    """Reads named tensors for a family's weight map, checking shapes and collecting every
    problem before failing.

    `place(name, host_array) -> array` receives each tensor as soon as it is read (after the
    transpose) and returns what goes into the params (e.g. cast and put on the device), so a
    caller can drop the host copy before the next tensor is read. `place=None` is a dry run:
    names and shapes are checked from the tensors' `shape` alone (a `LazyTensor` is not read)
    and every take returns a placeholder."""

    def __init__(self, tensors, source, place: Optional[Callable] = lambda name, a: a):
        self.t, self.source, self.place, self.missing, self.bad = tensors, source, place, [], []

    def __call__(self, name, shape, transpose=False):
        if name not in self.t:
            self.missing.append(name)
            return _placeholder(shape)
        a = self.t[name]
        have = tuple(a.shape)[::-1] if transpose else tuple(a.shape)
        if have != tuple(shape):
            self.bad.append(f"{name}: {have} (expected {tuple(shape)})")
            return _placeholder(shape)
        if self.place is None:
            return _placeholder(shape)
        a = np.asarray(a)
        return self.place(name, a.T if transpose else a)

    def check(self):
        msgs = []
        if self.bad:
            msgs.append("weights whose shapes do not match the config: " + "; ".join(self.bad[:8]))
        if self.missing:
            msgs.append(f"missing weights ({len(self.missing)}): " + ", ".join(self.missing[:8]))
        if msgs:
            raise CheckpointError(f"{self.source}: " + " | ".join(msgs))
