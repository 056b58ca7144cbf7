"""The probed form of a block that the NTK engine's Jacobian-free path differentiates:
the block plus zero probes/taps (see `base.Probes`), itself a block so that the model's
forward runs it unchanged."""
from __future__ import annotations

from typing import Callable

import jax

from .base import Block, Probes, block_kind

Array = jax.Array


@block_kind
class Probed(Block):
    block: Block
    probes: Probes

    kind = "probed"

    @property
    def width(self) -> int:
        return self.block.width

    def __call__(self, x: Array, act: Callable) -> Array:
        return self.block.apply_probed(x, act, self.probes)


__all__ = ["Probed"]
