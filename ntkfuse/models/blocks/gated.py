"""Gated MLP kinds (SwiGLU/GeGLU, docs/gated.md): y = W_down (σ(W_gate x) ⊙ (W_up x)), bias-free.

Neuron i is the gated sub-MLP (g_i = W_gate[i], u_i = W_up[i], c_i = W_down[:, i]):
y = Σ_i c_i σ(g_i·x)(u_i·x). The product σ(g·x)(u·x) is not a `NeuronView`
(σ applies to one of two projections), so these kinds leave `neuron_view`/`token_grads`
as None: the NTK uses its explicit-gradient strategies on them.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from .base import FIXED, Block, as_fixed, block_kind
from .low_rank_gated import LowRankGatedMLP

Array = jax.Array


def gated_forward(w_gate, w_up, w_down, x: Array, act: Callable, scale=None) -> Array:
    """THE gated forward: W_down (scale ⊙ σ(W_gate x) ⊙ (W_up x)); scale None means ones."""
    h = act(x @ w_gate.T.astype(x.dtype)) * (x @ w_up.T.astype(x.dtype))
    if scale is not None:
        h = h * scale.astype(x.dtype)
    return h @ w_down.T.astype(x.dtype)


@block_kind
class GatedMLP(Block):
    w_gate: Array             # (D, d)
    w_up: Array               # (D, d)
    w_down: Array             # (d, D)

    kind = "gated"
    compressible = True

    @property
    def width(self) -> int:
        return self.w_gate.shape[0]

    def __call__(self, x: Array, act: Callable) -> Array:
        return gated_forward(self.w_gate, self.w_up, self.w_down, x, act)

    def flops_per_token(self) -> int:
        k, d = self.w_gate.shape
        # two input projections, the output projection, the activation and the gating product
        return 4 * k * d + 2 * self.w_down.shape[0] * k + 2 * k

    # ---- neuron-level view for the one-shot methods

    def neuron_features(self) -> Array:
        """(D, 3d) float32 rows z_i = [W_gate[i], W_up[i], W_down[:, i]]."""
        return jnp.concatenate([jnp.asarray(p, jnp.float32) for p in (self.w_gate, self.w_up, self.w_down.T)],
                               axis=1)

    def split_neurons(self, M: Array) -> tuple:
        """(W_gate', W_up', W_down') of neuron rows M laid out as `neuron_features`."""
        d = self.w_gate.shape[1]
        return M[:, :d], M[:, d:2 * d], M[:, 2 * d:].T

    def with_neurons(self, M: Array) -> "GatedMLP":
        return GatedMLP(*self.split_neurons(M))

    def take_neurons(self, idx: Array) -> "GatedMLP":
        return GatedMLP(self.w_gate[idx], self.w_up[idx], self.w_down[:, idx])

    def neuron_scores(self, score: str = "l2") -> Array:
        """s_i = ‖g_i‖·‖u_i‖·‖c_i‖ (L2 or L1 norms): for |σ(t)| ≤ |t| (SiLU, GELU, ReLU) it bounds
        the neuron's output ‖c_i σ(g_i·x)(u_i·x)‖ ≤ s_i ‖x‖² (L2), as ‖a_i‖·‖c_i‖ does for a dense neuron."""
        o = 2 if score == "l2" else 1
        n = lambda w, ax: jnp.linalg.norm(w, ord=o, axis=ax)  # noqa: E731
        return n(self.w_gate, 1) * n(self.w_up, 1) * n(self.w_down, 0)

    def fuse(self, M: Array, counts) -> "FusedGatedMLP":
        return FusedGatedMLP.from_neurons(self, M, counts)

    def cluster_neurons(self, M: Array, counts) -> "GatedMLP":
        """Centroids with n_j absorbed as √n_j into W_up rows and W_down columns (both linear in
        the neuron, so this equals the fused block exactly; W_gate is inside σ and stays)."""
        g, u, c = self.split_neurons(M)
        s = jnp.sqrt(jnp.asarray(counts, jnp.float32))
        return GatedMLP(g, u * s[:, None], c * s[None, :])

    def sketch_neurons(self, top: Array, rest: Array, S: Array) -> "GatedMLP":
        """Kept neurons `top` plus Sᵀ on the neuron rows of W_gate and W_up, W_down S."""
        cat = lambda a, b, ax=0: jnp.concatenate([a, b], axis=ax)  # noqa: E731
        return GatedMLP(cat(self.w_gate[top], S.T @ self.w_gate[rest]),
                        cat(self.w_up[top], S.T @ self.w_up[rest]),
                        cat(self.w_down[:, top], self.w_down[:, rest] @ S, 1))

    # ---- matrix-level view for magnitude and svd (docs/gated.md)

    def weight_matrices(self) -> tuple:
        """(W_gate, W_up, W_down): the matrices `magnitude` masks and `svd` factorises."""
        return (self.w_gate, self.w_up, self.w_down)

    def with_weight_matrices(self, ws) -> "GatedMLP":
        """The same block with `weight_matrices` replaced (same order and shapes)."""
        return GatedMLP(*ws)

    def low_rank(self, factors) -> LowRankGatedMLP:
        """svd's block from one (U, V) pair per `weight_matrices` entry, W ≈ U V."""
        (ug, vg), (uu, vu), (ud, vd) = factors
        return LowRankGatedMLP(ug, vg, uu, vu, ud, vd)


@block_kind
class FusedGatedMLP(Block):
    """Fusion of a GatedMLP: centroids with a fixed diag(n) after the gating product."""
    w_gate: Array             # (k, d)
    w_up: Array               # (k, d)
    w_down: Array             # (d, k)
    counts: Array = dataclasses.field(metadata=FIXED)   # (k,) float32 cluster sizes: fixed, never trained

    kind = "fused_gated"

    def __post_init__(self):
        if isinstance(self.counts, (tuple, list)):   # sizes given as numbers: the float32 leaf
            object.__setattr__(self, "counts", as_fixed(self.counts))

    @classmethod
    def from_neurons(cls, block: GatedMLP, M: Array, counts) -> "FusedGatedMLP":
        return cls(*block.split_neurons(M), as_fixed(counts))

    @property
    def width(self) -> int:
        return self.w_gate.shape[0]

    def scale(self, dtype=jnp.float32) -> Array:
        return self.counts.astype(dtype)

    def __call__(self, x: Array, act: Callable) -> Array:
        return gated_forward(self.w_gate, self.w_up, self.w_down, x, act, self.scale())

    def flops_per_token(self) -> int:
        return GatedMLP(self.w_gate, self.w_up, self.w_down).flops_per_token() + self.width

    def fold(self) -> GatedMLP:
        """Inference-only export: diag(n) folded into W_down. Do not train the result as fusion."""
        return GatedMLP(self.w_gate, self.w_up, self.w_down * self.scale(self.w_down.dtype)[None, :])


__all__ = ["GatedMLP", "FusedGatedMLP", "gated_forward"]
