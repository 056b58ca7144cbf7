"""MLP block kinds. The transformer forward calls `apply_mlp(block, x, activation)` and
the *type* of the block's params subtree decides what runs, so a compressed model is
the same params tree with some MLP subtrees replaced.

Weights are stored the way the maths reads (METHOD.md §1): W1 is D×d, W2 is d×D, so
MLP(x) = W2 σ(W1 x + b1) + b2 = Σ_i c_i σ(a_i·x + β_i) + b2 with a_i = W1[i], c_i = W2[:, i].

Every kind is a dataclass registered as a JAX pytree. Its trainable arrays are pytree
leaves; anything that must never be trained (fusion's cluster sizes) is static
metadata, so no gradient, optimizer or weight decay can reach it.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp

Array = jax.Array


def activation_fn(name: str) -> Callable[[Array], Array]:
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name == "gelu_tanh":
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "relu":
        return jax.nn.relu
    if name == "identity":
        return lambda x: x
    raise ValueError(f"unknown activation {name!r}; known: gelu, gelu_tanh, relu, identity")


def _register(cls, data, meta=()):
    cls = dataclasses.dataclass(frozen=True)(cls)
    jax.tree_util.register_dataclass(cls, data_fields=list(data), meta_fields=list(meta))
    return cls


def _lin(x, w, b):
    y = x @ w.T.astype(x.dtype)
    return y if b is None else y + b.astype(x.dtype)


class DenseMLP:
    """The original block (and any plain width-k block): W2 σ(W1 x + b1) + b2."""
    w1: Array                 # (D, d)
    b1: Optional[Array]       # (D,) or None for bias-free MLPs
    w2: Array                 # (d, D)
    b2: Optional[Array]       # (d,) or None

    kind = "dense"

    @property
    def width(self) -> int:
        return self.w1.shape[0]

    def __call__(self, x: Array, act: Callable) -> Array:
        return _lin(act(_lin(x, self.w1, self.b1)), self.w2, self.b2)


DenseMLP = _register(DenseMLP, ["w1", "b1", "w2", "b2"])


class FusedMLP:
    """MLP Fusion: centroids (W1', b1', W2') with a fixed diag(n) after the activation.

    `counts` (cluster sizes n_j) are static metadata, not leaves: gradients w.r.t.
    centroid j scale with n_j and nothing ever updates n (METHOD.md §2).
    """
    w1: Array                 # (k, d)
    b1: Optional[Array]       # (k,)
    w2: Array                 # (d, k)
    b2: Optional[Array]       # (d,)
    counts: tuple = dataclasses.field(metadata={"fixed": True})   # (k,) ints: fixed, never trained

    kind = "fused"

    @property
    def width(self) -> int:
        return self.w1.shape[0]

    def scale(self, dtype=jnp.float32) -> Array:
        return jnp.asarray(self.counts, dtype=dtype)

    def __call__(self, x: Array, act: Callable) -> Array:
        h = act(_lin(x, self.w1, self.b1)) * self.scale(x.dtype)
        return _lin(h, self.w2, self.b2)

    def fold(self) -> DenseMLP:
        """Inference-only export: diag(n) folded into W2. Do not train the result as fusion."""
        return DenseMLP(self.w1, self.b1, self.w2 * self.scale(self.w2.dtype)[None, :], self.b2)


FusedMLP = _register(FusedMLP, ["w1", "b1", "w2", "b2"], ["counts"])


class LowRankMLP:
    """Each matrix replaced by two trainable factors: W1 ≈ U1 V1, W2 ≈ U2 V2 (svd)."""
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
        h = act(_lin(_lin(x, self.v1, None), self.u1, self.b1))
        return _lin(_lin(h, self.v2, None), self.u2, self.b2)


LowRankMLP = _register(LowRankMLP, ["u1", "v1", "b1", "u2", "v2", "b2"])


class LinearMLP:
    """Linear surrogate of a whole block: W x + b (W: d_out × d_in)."""
    w: Array
    b: Optional[Array]

    kind = "linear"

    @property
    def width(self) -> int:
        return 0

    def __call__(self, x: Array, act: Callable) -> Array:
        return _lin(x, self.w, self.b)


LinearMLP = _register(LinearMLP, ["w", "b"])


class LowRankLinearMLP:
    """Low-rank linear surrogate: U (V x) + b, U: d×r, V: r×d."""
    u: Array
    v: Array
    b: Optional[Array]

    kind = "low_rank_linear"

    @property
    def width(self) -> int:
        return self.v.shape[0]

    def __call__(self, x: Array, act: Callable) -> Array:
        return _lin(_lin(x, self.v, None), self.u, self.b)


LowRankLinearMLP = _register(LowRankLinearMLP, ["u", "v", "b"])

MLP_KINDS = (DenseMLP, FusedMLP, LowRankMLP, LinearMLP, LowRankLinearMLP)


def is_mlp(node) -> bool:
    return isinstance(node, MLP_KINDS)


def apply_mlp(block, x: Array, activation: str) -> Array:
    if not is_mlp(block):
        raise TypeError(f"not an MLP block: {type(block).__name__}; known kinds: "
                        f"{', '.join(k.__name__ for k in MLP_KINDS)}")
    return block(x, activation_fn(activation))


def count_params(block) -> int:
    """Trainable parameters of a block (fusion's fixed counts are not parameters)."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(block)))
