"""DenseMLP: the original block (and any plain width-k block), W2 σ(W1 x + b1) + b2.

Weights are stored the way the maths reads (METHOD.md §1): W1 is D×d, W2 is d×D, so
neuron i is the sub-MLP (a_i = W1[i], β_i = b1[i], c_i = W2[:, i]). The neuron-level
operations the one-shot methods use (features, scores, selection, rebuilding from
neuron rows) live here, so a new original kind (e.g. gated) provides its own.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from .base import NEURON_TOKEN_GRADS, Block, NeuronView, _n, block_kind, neuron_forward
from .low_rank import LowRankMLP

Array = jax.Array


@block_kind
class DenseMLP(Block):
    w1: Array                 # (D, d)
    b1: Optional[Array]       # (D,) or None for bias-free MLPs
    w2: Array                 # (d, D)
    b2: Optional[Array]       # (d,) or None

    kind = "dense"
    compressible = True
    token_grads = NEURON_TOKEN_GRADS

    @property
    def width(self) -> int:
        return self.w1.shape[0]

    def neuron_view(self) -> NeuronView:
        return NeuronView(self.w1, self.b1, self.w2, self.b2, None)

    def __call__(self, x: Array, act: Callable) -> Array:
        return neuron_forward(self.neuron_view(), x, act)

    def flops_per_token(self) -> int:
        k, d = self.w1.shape
        return 2 * k * d + 2 * self.w2.shape[0] * k + _n(self.b1) + _n(self.b2) + k

    # ---- neuron-level view for the one-shot methods (METHOD.md §1-2)

    def neuron_features(self) -> Array:
        """(D, 2d+1) float32 rows z_i = [W1[i], b1[i], W2[:, i]] ((D, 2d) without b1)."""
        parts = [self.w1] + ([self.b1[:, None]] if self.b1 is not None else []) + [self.w2.T]
        return jnp.concatenate([jnp.asarray(p, jnp.float32) for p in parts], axis=1)

    def split_neurons(self, M: Array) -> tuple:
        """(W1', b1', W2') of neuron rows M laid out as `neuron_features`."""
        d = self.w1.shape[1]
        has_b1 = self.b1 is not None
        return M[:, :d], (M[:, d] if has_b1 else None), M[:, d + (1 if has_b1 else 0):].T

    def with_neurons(self, M: Array) -> "DenseMLP":
        """A block of width len(M) from neuron rows M (`neuron_features` layout); b2 kept."""
        w1, b1, w2 = self.split_neurons(M)
        return DenseMLP(w1, b1, w2, self.b2)

    def take_neurons(self, idx: Array) -> "DenseMLP":
        """The sub-block of neurons `idx` (the same index set for W1 rows, b1 and W2 columns)."""
        return DenseMLP(self.w1[idx], None if self.b1 is None else self.b1[idx], self.w2[:, idx], self.b2)

    def neuron_scores(self, score: str = "l2") -> Array:
        """s_i = ‖a_i‖·‖c_i‖ (L2 or L1 norms) of neuron i."""
        o = 2 if score == "l2" else 1
        return jnp.linalg.norm(self.w1, ord=o, axis=1) * jnp.linalg.norm(self.w2, ord=o, axis=0)

    def fuse(self, M: Array, counts):
        """Fusion's block: centroid rows M with the fixed diag(n) of cluster sizes `counts`."""
        from .fused import FusedMLP   # fused.py imports this module
        return FusedMLP.from_neurons(self, M, counts)

    def cluster_neurons(self, M: Array, counts) -> "DenseMLP":
        """Centroids with √n_j absorbed into both layers (W1', b1' rows and W2' columns)."""
        w1, b1, w2 = self.split_neurons(M)
        s = jnp.sqrt(jnp.asarray(counts, jnp.float32))
        return DenseMLP(w1 * s[:, None], None if b1 is None else b1 * s, w2 * s[None, :], self.b2)

    def sketch_neurons(self, top: Array, rest: Array, S: Array) -> "DenseMLP":
        """Kept neurons `top` plus W1' = SᵀW1, b1' = Sᵀb1, W2' = W2 S over the neurons `rest`."""
        w1 = jnp.concatenate([self.w1[top], S.T @ self.w1[rest]], axis=0)
        b1 = None if self.b1 is None else jnp.concatenate([self.b1[top], S.T @ self.b1[rest]])
        w2 = jnp.concatenate([self.w2[:, top], self.w2[:, rest] @ S], axis=1)
        return DenseMLP(w1, b1, w2, self.b2)

    # ---- matrix-level view for magnitude and svd (METHOD.md §2)

    def weight_matrices(self) -> tuple:
        """(W1, W2): the matrices `magnitude` masks and `svd` factorises (biases are neither)."""
        return (self.w1, self.w2)

    def with_weight_matrices(self, ws) -> "DenseMLP":
        """The same block with `weight_matrices` replaced (same order and shapes); biases kept."""
        w1, w2 = ws
        return DenseMLP(w1, self.b1, w2, self.b2)

    def low_rank(self, factors) -> LowRankMLP:
        """svd's block from one (U, V) pair per `weight_matrices` entry, W ≈ U V; biases kept."""
        (u1, v1), (u2, v2) = factors
        return LowRankMLP(u1, v1, self.b1, u2, v2, self.b2)


__all__ = ["DenseMLP"]
