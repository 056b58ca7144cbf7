"""FusedMLP (MLP Fusion, METHOD.md §2): centroids (W1', b1', W2') with a fixed diag(n)
after the activation. `counts` (cluster sizes n_j) are declared fixed: static metadata,
never a leaf, so gradients w.r.t. centroid j scale with n_j and nothing ever updates n.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .base import NEURON_TOKEN_GRADS, Block, NeuronView, block_kind, neuron_forward
from .dense import DenseMLP

Array = jax.Array


@block_kind
class FusedMLP(Block):
    w1: Array                 # (k, d)
    b1: Optional[Array]       # (k,)
    w2: Array                 # (d, k)
    b2: Optional[Array]       # (d,)
    counts: tuple = dataclasses.field(metadata={"fixed": True})   # (k,) ints: fixed, never trained

    kind = "fused"
    token_grads = NEURON_TOKEN_GRADS

    @classmethod
    def from_neurons(cls, block: DenseMLP, M: Array, counts) -> "FusedMLP":
        """Fusion of `block`: centroid rows M (`DenseMLP.neuron_features` layout), sizes `counts`."""
        w1, b1, w2 = block.split_neurons(M)
        return cls(w1, b1, w2, block.b2, tuple(int(c) for c in np.asarray(counts)))

    @property
    def width(self) -> int:
        return self.w1.shape[0]

    def scale(self, dtype=jnp.float32) -> Array:
        return jnp.asarray(self.counts, dtype=dtype)

    def neuron_view(self) -> NeuronView:
        return NeuronView(self.w1, self.b1, self.w2, self.b2, self.scale())

    def __call__(self, x: Array, act: Callable) -> Array:
        return neuron_forward(self.neuron_view(), x, act)

    def flops_per_token(self) -> int:
        return DenseMLP(self.w1, self.b1, self.w2, self.b2).flops_per_token() + self.width

    def fold(self) -> DenseMLP:
        """Inference-only export: diag(n) folded into W2. Do not train the result as fusion."""
        return DenseMLP(self.w1, self.b1, self.w2 * self.scale(self.w2.dtype)[None, :], self.b2)

    # Stacking across layers: the counts become a (k,) float32 array beside a DenseMLP holder,
    # so layers with different cluster sizes share one vmapped computation.
    def split_fixed(self) -> tuple:
        return DenseMLP(self.w1, self.b1, self.w2, self.b2), {"counts": np.asarray(self.counts, np.float32)}

    @classmethod
    def apply_split(cls, holder, fixed: dict, x: Array, act: Callable) -> Array:
        return neuron_forward(NeuronView(holder.w1, holder.b1, holder.w2, holder.b2, fixed["counts"]), x, act)

    @classmethod
    def join_fixed(cls, holder, fixed_meta: dict) -> "FusedMLP":
        return cls(holder.w1, holder.b1, holder.w2, holder.b2, tuple(fixed_meta["counts"]))


__all__ = ["FusedMLP"]
