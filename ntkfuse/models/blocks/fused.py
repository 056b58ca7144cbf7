"""FusedMLP (MLP Fusion, METHOD.md §2): centroids (W1', b1', W2') with a fixed diag(n)
after the activation. `counts` (cluster sizes n_j) is a (k,) float32 leaf declared fixed
(`base.FIXED`): gradients w.r.t. centroid j scale with n_j, nothing ever updates n
(`ntkfuse.frozen` keeps it out of gradients and optimizer state), and two fusion results
of the same shapes share every compiled program whatever their cluster sizes.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from .base import FIXED, NEURON_TOKEN_GRADS, Block, NeuronView, as_fixed, block_kind, neuron_forward
from .dense import DenseMLP

Array = jax.Array


@block_kind
class FusedMLP(Block):
    w1: Array                 # (k, d)
    b1: Optional[Array]       # (k,)
    w2: Array                 # (d, k)
    b2: Optional[Array]       # (d,)
    counts: Array = dataclasses.field(metadata=FIXED)   # (k,) float32 cluster sizes: fixed, never trained

    kind = "fused"
    token_grads = NEURON_TOKEN_GRADS

    def __post_init__(self):
        if isinstance(self.counts, (tuple, list)):   # sizes given as numbers: the float32 leaf
            object.__setattr__(self, "counts", as_fixed(self.counts))

    @classmethod
    def from_neurons(cls, block: DenseMLP, M: Array, counts) -> "FusedMLP":
        """Fusion of `block`: centroid rows M (`DenseMLP.neuron_features` layout), sizes `counts`."""
        w1, b1, w2 = block.split_neurons(M)
        return cls(w1, b1, w2, block.b2, as_fixed(counts))

    @property
    def width(self) -> int:
        return self.w1.shape[0]

    def scale(self, dtype=jnp.float32) -> Array:
        return self.counts.astype(dtype)

    def neuron_view(self) -> NeuronView:
        return NeuronView(self.w1, self.b1, self.w2, self.b2, self.scale())

    def __call__(self, x: Array, act: Callable) -> Array:
        return neuron_forward(self.neuron_view(), x, act)

    def flops_per_token(self) -> int:
        return DenseMLP(self.w1, self.b1, self.w2, self.b2).flops_per_token() + self.width

    def fold(self) -> DenseMLP:
        """Inference-only export: diag(n) folded into W2. Do not train the result as fusion."""
        return DenseMLP(self.w1, self.b1, self.w2 * self.scale(self.w2.dtype)[None, :], self.b2)


__all__ = ["FusedMLP"]
