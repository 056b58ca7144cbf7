"""One-shot methods on GatedMLP through the block protocol (docs/gated.md)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkfuse.compress import CompressionError, compress_block, nonzero_params, svd_rank_for_width
from ntkfuse.models.blocks import FusedGatedMLP, GatedMLP, LowRankGatedMLP, activation_fn

d, D = 6, 12
ACT = activation_fn("silu")


def _block(seed=0):
    r = np.random.default_rng(seed)
    return GatedMLP(*(jnp.asarray(r.normal(size=s) * 0.5, jnp.float32) for s in ((D, d), (D, d), (d, D))))


def _x():
    return jnp.asarray(np.random.default_rng(7).normal(size=(4, 5, d)), jnp.float32)


def test_fusion_at_full_width_is_exact():
    """k = D: every neuron is its own cluster (distinct neurons), n_j = 1, so the fused block is the
    original up to a permutation of neurons (summation order)."""
    b = _block()
    f = compress_block(b, "fusion", D, jax.random.PRNGKey(0), activation="silu", n_init=1)
    assert isinstance(f, FusedGatedMLP) and np.array_equal(f.counts, np.ones(D))
    np.testing.assert_allclose(np.asarray(f(_x(), ACT)), np.asarray(b(_x(), ACT)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("width", [3, 7])
def test_cluster_equals_fusion_exactly(width):
    """cluster puts √n into W_up rows and W_down columns (both linear in the neuron): same function as fusion."""
    b = _block(1)
    key = jax.random.PRNGKey(3)
    f = compress_block(b, "fusion", width, key, activation="silu", n_init=2)
    c = compress_block(b, "cluster", width, key, activation="silu", n_init=2)
    assert isinstance(c, GatedMLP) and c.width == f.width == width and float(f.counts.sum()) == D
    np.testing.assert_allclose(np.asarray(c(_x(), ACT)), np.asarray(f(_x(), ACT)), rtol=1e-5, atol=1e-6)


def test_prune_keeps_the_top_score_neurons():
    b = _block(2)
    p = compress_block(b, "prune", 5, jax.random.PRNGKey(0), activation="silu")
    top = np.sort(np.argsort(-np.asarray(b.neuron_scores()))[:5])
    assert isinstance(p, GatedMLP) and p.width == 5
    np.testing.assert_array_equal(np.asarray(p.w_gate), np.asarray(b.w_gate)[top])
    np.testing.assert_array_equal(np.asarray(p.w_down), np.asarray(b.w_down)[:, top])


def test_sketch_rows_and_keep():
    b = _block(3)
    key = jax.random.PRNGKey(1)
    s = compress_block(b, "sketch", 6, key, activation="silu", keep=2)
    top = np.sort(np.argsort(-np.asarray(b.neuron_scores()))[:2])
    rest = np.setdiff1d(np.arange(D), top)
    S = np.asarray(jax.random.normal(key, (D - 2, 4), jnp.float32)) / 2.0
    np.testing.assert_array_equal(np.asarray(s.w_up[:2]), np.asarray(b.w_up)[top])
    np.testing.assert_allclose(np.asarray(s.w_gate[2:]), S.T @ np.asarray(b.w_gate)[rest], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(s.w_up[2:]), S.T @ np.asarray(b.w_up)[rest], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(s.w_down[:, 2:]), np.asarray(b.w_down)[:, rest] @ S, rtol=1e-5, atol=1e-6)


def test_mmd_runs_on_neuron_features():
    m = compress_block(_block(4), "mmd", 4, jax.random.PRNGKey(0), activation="silu", steps=5)
    assert isinstance(m, GatedMLP) and m.width == 4 and np.all(np.isfinite(np.asarray(m(_x(), ACT))))


MATS = ("w_gate", "w_up", "w_down")


def _mats(b):
    return np.concatenate([np.asarray(getattr(b, n)).ravel() for n in MATS])


@pytest.mark.parametrize("sparsity", [0.0, 0.2, 0.5])
def test_magnitude_is_one_threshold_over_the_three_matrices(sparsity):
    """The dense rule on W_gate, W_up, W_down together: the round(s·n) smallest |w| of the block's
    3Dd weights are zeroed, every kept weight is at least as large as every removed one, width kept."""
    b = _block(5)
    b = GatedMLP(b.w_gate, b.w_up * 3.0, b.w_down * 0.1)   # unequal scales: one threshold, not one per matrix
    m = compress_block(b, "magnitude", 4, jax.random.PRNGKey(0), activation="silu", sparsity=sparsity)
    assert isinstance(m, GatedMLP) and m.width == D and m.param_count() == 3 * D * d
    before, after = _mats(b), _mats(m)
    removed = (after == 0) & (before != 0)
    assert removed.sum() == round(sparsity * before.size) == before.size - nonzero_params(m)
    np.testing.assert_array_equal(after[~removed], before[~removed])   # kept weights unchanged
    if removed.any():
        assert np.abs(before[removed]).max() <= np.abs(before[~removed]).min()
        assert np.mean(np.asarray(m.w_down) == 0) > np.mean(np.asarray(m.w_up) == 0)   # global, not per matrix
    assert nonzero_params(m) == int(np.count_nonzero(after))


def test_svd_full_rank_reproduces_the_block():
    """r = min(D, d): each factor pair is its matrix up to float32 rounding, so is the block's output."""
    b = _block(6)
    s = compress_block(b, "svd", 4, jax.random.PRNGKey(0), activation="silu", rank=min(D, d))
    assert isinstance(s, LowRankGatedMLP) and s.rank == min(D, d) and s.width == D
    for (u, v), w in zip(((s.u_gate, s.v_gate), (s.u_up, s.v_up), (s.u_down, s.v_down)), MATS):
        W = np.asarray(getattr(b, w), np.float64)
        # measured 5.8e-8 of max |W| (float32 factors)
        assert np.abs(np.asarray(u, np.float64) @ np.asarray(v, np.float64) - W).max() < 1e-6 * np.abs(W).max()
    y, want = np.asarray(s(_x(), ACT)), np.asarray(b(_x(), ACT))
    # measured max |Δ| = 1.2e-6 on outputs of max |y| = 5.3 (2.3e-7 relative: float32 rounding)
    assert np.abs(y - want).max() < 2e-6 * np.abs(want).max()


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_svd_factors_are_the_best_rank_r_approximations(rank):
    """Eckart–Young, against numpy's float64 SVD: U V is the truncated SVD Σ_{i<r} σ_i u_i v_iᵀ of each
    matrix and ‖W − U V‖_F = sqrt(Σ_{i≥r} σ_i²), the smallest possible Frobenius error at rank r."""
    b = _block(7)
    s = compress_block(b, "svd", 4, jax.random.PRNGKey(0), activation="silu", rank=rank)
    assert s.rank == rank
    for (u, v), w in zip(((s.u_gate, s.v_gate), (s.u_up, s.v_up), (s.u_down, s.v_down)), MATS):
        W = np.asarray(getattr(b, w), np.float64)
        assert u.shape == (W.shape[0], rank) and v.shape == (rank, W.shape[1])
        U, S, Vt = np.linalg.svd(W, full_matrices=False)
        best = (U[:, :rank] * S[:rank]) @ Vt[:rank]
        got = np.asarray(u, np.float64) @ np.asarray(v, np.float64)
        np.testing.assert_allclose(got, best, rtol=0, atol=1e-6 * S[0])   # measured ≤ 2.8e-8 σ_1
        # the float32 rounding of the factors lies in the kept singular subspaces, orthogonal to the
        # residual, so the error norm is optimal to second order: measured ≤ 8e-15 σ_1
        err, opt = np.linalg.norm(W - got), np.sqrt(np.sum(S[rank:] ** 2))
        assert abs(err - opt) <= 1e-10 * S[0], (w, err, opt)


def test_svd_default_rank_is_the_dense_rule():
    """Default rank: a width-k gated block has 3kd weights, rank-t factors of the three D×d matrices
    3t(D+d): t = floor(kd/(D+d)) (≥ 1), the dense rule, so the factors never outnumber the block's."""
    b = _block(8)
    for width in (1, 4, 7, D):
        s = compress_block(b, "svd", width, jax.random.PRNGKey(0), activation="silu")
        assert s.rank == svd_rank_for_width(d, D, width) == max(1, width * d // (D + d))
        assert s.param_count() == 3 * s.rank * (D + d)
        assert width * d < D + d or s.param_count() <= 3 * width * d
    with pytest.raises(CompressionError, match=r"svd rank must be in \[1, 6\], got 7"):
        compress_block(b, "svd", 4, jax.random.PRNGKey(0), activation="silu", rank=d + 1)
    with pytest.raises(CompressionError, match="compresses an original block"):
        compress_block(compress_block(b, "svd", 4, jax.random.PRNGKey(0), activation="silu"), "prune", 2,
                       jax.random.PRNGKey(0), activation="silu")


def test_fused_gated_is_not_compressible_again():
    f = compress_block(_block(), "fusion", 4, jax.random.PRNGKey(0), activation="silu", n_init=1)
    with pytest.raises(CompressionError, match="compresses an original block"):
        compress_block(f, "prune", 2, jax.random.PRNGKey(0), activation="silu")


def test_nan_weights_are_refused_by_field_name():
    b = _block()
    bad = GatedMLP(b.w_gate, b.w_up.at[0, 0].set(jnp.nan), b.w_down)
    with pytest.raises(CompressionError, match="w_up contains NaN"):
        compress_block(bad, "prune", 4, jax.random.PRNGKey(0), activation="silu")
