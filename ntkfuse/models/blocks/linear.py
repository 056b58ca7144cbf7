"""Linear surrogates of a whole block (METHOD.md §4): W x + b, and its low-rank U (V x) + b."""
from __future__ import annotations

from typing import Callable, Optional

import jax

from .base import Block, _n, block_kind, lin

Array = jax.Array


@block_kind
class LinearMLP(Block):
    w: Array                  # (d_out, d_in)
    b: Optional[Array]

    kind = "linear"

    @property
    def width(self) -> int:
        return 0

    def __call__(self, x: Array, act: Callable) -> Array:
        return lin(x, self.w, self.b)

    def flops_per_token(self) -> int:
        return 2 * self.w.size + _n(self.b)


@block_kind
class LowRankLinearMLP(Block):
    u: Array                  # (d, r)
    v: Array                  # (r, d)
    b: Optional[Array]

    kind = "low_rank_linear"

    @property
    def width(self) -> int:
        return self.v.shape[0]

    def __call__(self, x: Array, act: Callable) -> Array:
        return lin(lin(x, self.v, None), self.u, self.b)

    def flops_per_token(self) -> int:
        return 2 * (self.u.size + self.v.size) + _n(self.b)


__all__ = ["LinearMLP", "LowRankLinearMLP"]
