"""Closed-form linear surrogates: ridge regression of a block's output on its input.

Solved in float64 on the host from sufficient statistics (Σx, Σy, XᵀX, XᵀY), which
accumulate over chunks, so the whole corpus never has to be in memory. The bias is
not penalised (the data are centred). The low-rank linear surrogate is the rank-r
truncated SVD of the ridge solution, split symmetrically (U√S, √S Vᵀ).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import jax.numpy as jnp

from ..models import LinearMLP, LowRankLinearMLP


class RidgeStats:
    """Running float64 sufficient statistics of (X, Y) pairs for ridge regression."""

    def __init__(self, d_in: int, d_out: int):
        self.n = 0
        self.sx = np.zeros(d_in)
        self.sy = np.zeros(d_out)
        self.xx = np.zeros((d_in, d_in))
        self.xy = np.zeros((d_in, d_out))

    def update(self, x: np.ndarray, y: np.ndarray) -> "RidgeStats":
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"expected X (n, d_in), Y (n, d_out) with the same n; got {x.shape}, {y.shape}")
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.xx += x.T @ x
        self.xy += x.T @ y
        return self

    def solve(self, ridge: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
        """W (d_out, d_in), b (d_out,) minimising Σ‖y − Wx − b‖² + ridge·v̄·n·‖W‖²_F, where v̄ is
        the mean per-feature variance of x (so `ridge` is dimensionless)."""
        if self.n < 1:
            raise ValueError("no data: ridge regression needs at least one pair")
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        mx, my = self.sx / self.n, self.sy / self.n
        cxx = self.xx / self.n - np.outer(mx, mx)
        cxy = self.xy / self.n - np.outer(mx, my)
        # Scale the penalty with the mean variance so `ridge` is dimensionless.
        lam = ridge * max(np.trace(cxx) / cxx.shape[0], 1e-30)
        wt = np.linalg.solve(cxx + lam * np.eye(cxx.shape[0]), cxy)
        return wt.T, my - wt.T @ mx


def fit_ridge(x: np.ndarray | Iterable, y: np.ndarray | None = None, ridge: float = 1e-6,
              dtype=jnp.float32) -> LinearMLP:
    """Ridge fit of one block. `x, y`: arrays (n, d); or `x` an iterable of (X, Y) chunks."""
    chunks = [(x, y)] if y is not None else x
    stats = None
    for cx, cy in chunks:
        stats = stats or RidgeStats(np.shape(cx)[-1], np.shape(cy)[-1])
        stats.update(cx, cy)
    if stats is None:
        raise ValueError("no data: ridge regression needs at least one chunk")
    w, b = stats.solve(ridge)
    return LinearMLP(jnp.asarray(w, dtype), jnp.asarray(b, dtype))


def low_rank_from_linear(block: LinearMLP, rank: int, dtype=None) -> LowRankLinearMLP:
    """Best rank-r approximation (Frobenius) of W, from its SVD, split as U√S · √S Vᵀ."""
    w = np.asarray(block.w, np.float64)
    if not 1 <= rank <= min(w.shape):
        raise ValueError(f"rank must be in 1..{min(w.shape)}, got {rank}")
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    r = np.sqrt(s[:rank])
    dtype = dtype or block.w.dtype
    return LowRankLinearMLP(jnp.asarray(u[:, :rank] * r, dtype), jnp.asarray(r[:, None] * vt[:rank], dtype),
                            None if block.b is None else jnp.asarray(block.b, dtype))
