"""LowRankMLP (svd): each matrix replaced by two trainable factors, W1 ≈ U1 V1, W2 ≈ U2 V2."""
from __future__ import annotations

from typing import Callable, Optional

import jax

from .base import Block, _n, block_kind, lin

Array = jax.Array


@block_kind
class LowRankMLP(Block):
    u1: Array                 # (D, t)
    v1: Array                 # (t, d)
    b1: Optional[Array]
    u2: Array                 # (d, t)
    v2: Array                 # (t, D)
    b2: Optional[Array]

    kind = "low_rank"

    @property
    def width(self) -> int:
        return self.u1.shape[0]

    @property
    def rank(self) -> int:
        return self.v1.shape[0]

    def __call__(self, x: Array, act: Callable) -> Array:
        h = act(lin(lin(x, self.v1, None), self.u1, self.b1))
        return lin(lin(h, self.v2, None), self.u2, self.b2)

    def flops_per_token(self) -> int:
        D, t = self.u1.shape
        d, d_out = self.v1.shape[1], self.u2.shape[0]
        return 2 * (t * d + D * t) + 2 * (t * D + d_out * t) + _n(self.b1) + _n(self.b2) + D


__all__ = ["LowRankMLP"]
