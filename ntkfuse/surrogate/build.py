"""Initial surrogate blocks for each kind (METHOD.md §4), ready for `fit_blocks`.

Kinds:
- "linear": closed-form ridge (float64 on the host); `fit` refines nothing by default.
- "linear_sgd": a LinearMLP from zeros, to be fitted by SGD (AdamW).
- "low_rank_linear": rank-r truncated SVD of the ridge solution, then fitted.
- "bottleneck": a width-k MLP from a one-shot method (`compress_block(..., method)`,
  e.g. fusion → FusedMLP with fixed counts, prune → DenseMLP), or "random".
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..models.blocks import DenseMLP, LinearMLP
from .linear import fit_ridge, low_rank_from_linear

KINDS = ("linear", "linear_sgd", "low_rank_linear", "bottleneck")


class SurrogateError(ValueError):
    """Unknown surrogate kind or missing inputs."""


def random_bottleneck(d: int, width: int, key, dtype=jnp.float32, std: float = 0.02) -> DenseMLP:
    k1, k2 = jax.random.split(key)
    return DenseMLP(std * jax.random.normal(k1, (width, d), dtype), jnp.zeros((width,), dtype),
                    std * jax.random.normal(k2, (d, width), dtype), jnp.zeros((d,), dtype))


def init_surrogates(kind: str, teachers: Sequence, key, *, width: Optional[int] = None, rank: Optional[int] = None,
                    method: str = "fusion", activation: str = "gelu", x=None, y=None, ridge: float = 1e-6,
                    **options) -> list:
    """One initial surrogate per teacher block. `x, y`: (L, N, d) collected pairs (needed
    by the linear kinds). `options` go to `compress_block` for bottlenecks."""
    if kind not in KINDS:
        raise SurrogateError(f"unknown surrogate kind {kind!r}; valid: {', '.join(KINDS)}")
    L = len(teachers)
    keys = jax.random.split(key, max(L, 1))
    d = teachers[0].w1.shape[1] if hasattr(teachers[0], "w1") else None
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
        dim = d if d is not None else np.shape(x)[-1]
        return [LinearMLP(jnp.zeros((dim, dim)), jnp.zeros((dim,))) for _ in range(L)]
    if width is None or width < 1:
        raise SurrogateError(f"bottleneck surrogates need a positive width, got {width}")
    if method == "random":
        return [random_bottleneck(d, width, k) for k in keys]
    from ..compress import compress_block
    return [compress_block(t, method, width, k, activation=activation, **options) for t, k in zip(teachers, keys)]
