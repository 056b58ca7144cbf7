"""Generic name-mapping helpers for the families' HF weight maps
(`Family.params_from_hf(cfg, tensors, take)`)."""
from __future__ import annotations

import re

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


class Taker:
    """Pops named tensors, checking shapes and collecting every problem before failing."""

    def __init__(self, tensors, source):
        self.t, self.source, self.missing, self.bad = tensors, source, [], []

    def __call__(self, name, shape, transpose=False):
        if name not in self.t:
            self.missing.append(name)
            return np.zeros(shape, np.float32)
        a = self.t[name]
        a = a.T if transpose else a
        if tuple(a.shape) != tuple(shape):
            self.bad.append(f"{name}: {tuple(a.shape)} (expected {tuple(shape)})")
            return np.zeros(shape, np.float32)
        return a

    def check(self):
        msgs = []
        if self.bad:
            msgs.append("weights whose shapes do not match the config: " + "; ".join(self.bad[:8]))
        if self.missing:
            msgs.append(f"missing weights ({len(self.missing)}): " + ", ".join(self.missing[:8]))
        if msgs:
            raise CheckpointError(f"{self.source}: " + " | ".join(msgs))
