"""Initial surrogate blocks for each kind (METHOD.md §4), ready for `fit_blocks`.

Kinds:
- "linear": closed-form ridge (float64 on the host); `fit` refines nothing by default.
- "linear_sgd": a LinearMLP from zeros, to be fitted by SGD (AdamW).
- "low_rank_linear": rank-r truncated SVD of the ridge solution, then fitted.
- "bottleneck": a width-k MLP from a one-shot method (`compress_block(..., method)`,
  e.g. fusion → FusedMLP with fixed counts, prune → DenseMLP), or "random".

Any teacher kind (docs/surrogates.md, "Gated and MoE blocks"): d comes from the block's
forward (`block_dim`), a "random" bottleneck has the teacher's kind (a DenseMLP for a dense
teacher, a bias-free GatedMLP for a gated one, via the block's `with_neurons`), and an MoE
teacher (a container) gets one surrogate per expert behind its unchanged router — its
bottlenecks are `compress_block`'s expert-wise results; its linear kinds replace the whole
layer, router included, by one linear map of the layer's pairs.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..models.blocks import DenseMLP, LinearMLP, activation_fn
from .linear import fit_ridge, low_rank_from_linear

KINDS = ("linear", "linear_sgd", "low_rank_linear", "bottleneck")


class SurrogateError(ValueError):
    """Unknown surrogate kind or missing inputs."""


def random_bottleneck(d: int, width: int, key, dtype=jnp.float32, std: float = 0.02) -> DenseMLP:
    k1, k2 = jax.random.split(key)
    return DenseMLP(std * jax.random.normal(k1, (width, d), dtype), jnp.zeros((width,), dtype),
                    std * jax.random.normal(k2, (d, width), dtype), jnp.zeros((d,), dtype))


def block_dim(block) -> int:
    """The model dimension d of a block (every kind maps d → d), from the protocol: the
    neuron view's input width, a container's first sub-block, or else the leaf dimension c
    for which the block's forward maps (1, c) to (1, c) (abstract evaluation, no compute)."""
    subs = block.sub_blocks()
    if subs:
        return block_dim(subs[0])
    v = block.neuron_view()
    if v is not None:
        return int(v.w1.shape[1])
    act = activation_fn("identity")
    for c in sorted({int(n) for a in jax.tree_util.tree_leaves(block) for n in a.shape}):
        try:
            out = jax.eval_shape(lambda x: block(x, act), jax.ShapeDtypeStruct((1, c), jnp.float32))
        except (TypeError, ValueError):
            continue
        if tuple(out.shape) == (1, c):
            return c
    raise SurrogateError(f"cannot tell the model dimension of a {type(block).__name__} block")


def random_like(teacher, width: int, key, std: float = 0.02):
    """A random width-k block of the teacher's kind: `random_bottleneck` for a sub-MLP bundle
    (dense), a random bias-free GatedMLP (neuron rows N(0, std²) through `with_neurons`) for a
    gated teacher, and for a container (MoE) the same router with one random block per expert
    (expert e from `fold_in(key, e)`)."""
    subs = teacher.sub_blocks()
    if subs is not None:
        return teacher.with_sub_blocks([random_like(s, width, jax.random.fold_in(key, e), std)
                                        for e, s in enumerate(subs)])
    if teacher.neuron_view() is not None:
        return random_bottleneck(block_dim(teacher), width, key, std=std)
    if not hasattr(teacher, "with_neurons"):
        raise SurrogateError(f"no random bottleneck of a {type(teacher).__name__} teacher (not an original "
                             "block with neuron rows)")
    F = int(teacher.neuron_features().shape[1])
    return teacher.with_neurons(std * jax.random.normal(key, (width, F), jnp.float32))


def init_surrogates(kind: str, teachers: Sequence, key, *, width: Optional[int] = None, rank: Optional[int] = None,
                    method: str = "fusion", activation: str = "gelu", x=None, y=None, ridge: float = 1e-6,
                    **options) -> list:
    """One initial surrogate per teacher block. `x, y`: (L, N, d) collected pairs (needed
    by the linear kinds). `options` go to `compress_block` for bottlenecks."""
    if kind not in KINDS:
        raise SurrogateError(f"unknown surrogate kind {kind!r}; valid: {', '.join(KINDS)}")
    L = len(teachers)
    keys = jax.random.split(key, max(L, 1))
    d = int(np.shape(x)[-1]) if x is not None else (block_dim(teachers[0]) if L else None)
    if kind in ("linear", "low_rank_linear"):
        if x is None or y is None:
            raise SurrogateError(f"surrogate kind {kind!r} needs collected pairs x, y")
        if kind == "low_rank_linear" and rank is None:   # before the ridge fits, not after
            raise SurrogateError("low_rank_linear needs rank=")
        lin = [fit_ridge(np.asarray(x[i]), np.asarray(y[i]), ridge) for i in range(L)]
        if kind == "linear":
            return lin
        return [low_rank_from_linear(b, rank) for b in lin]
    if kind == "linear_sgd":
        return [LinearMLP(jnp.zeros((d, d)), jnp.zeros((d,))) for _ in range(L)]
    if width is None or width < 1:
        raise SurrogateError(f"bottleneck surrogates need a positive width, got {width}")
    if method == "random":
        return [random_like(t, width, k) for t, k in zip(teachers, keys)]
    from ..compress import compress_block
    return [compress_block(t, method, width, k, activation=activation, **options) for t, k in zip(teachers, keys)]
