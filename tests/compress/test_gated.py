"""One-shot methods on GatedMLP through the block protocol (docs/gated.md)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkfuse.compress import CompressionError, compress_block
from ntkfuse.models.blocks import FusedGatedMLP, GatedMLP, activation_fn

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
    assert isinstance(f, FusedGatedMLP) and f.counts == (1,) * D
    np.testing.assert_allclose(np.asarray(f(_x(), ACT)), np.asarray(b(_x(), ACT)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("width", [3, 7])
def test_cluster_equals_fusion_exactly(width):
    """cluster puts √n into W_up rows and W_down columns (both linear in the neuron): same function as fusion."""
    b = _block(1)
    key = jax.random.PRNGKey(3)
    f = compress_block(b, "fusion", width, key, activation="silu", n_init=2)
    c = compress_block(b, "cluster", width, key, activation="silu", n_init=2)
    assert isinstance(c, GatedMLP) and c.width == f.width == width and sum(f.counts) == D
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


@pytest.mark.parametrize("method", ["magnitude", "svd"])
def test_unsupported_methods_are_refused(method):
    with pytest.raises(CompressionError, match=f"{method} does not apply to GatedMLP; supported: "
                                               "fusion, cluster, sketch, prune, mmd"):
        compress_block(_block(), method, 4, jax.random.PRNGKey(0), activation="silu")


def test_fused_gated_is_not_compressible_again():
    f = compress_block(_block(), "fusion", 4, jax.random.PRNGKey(0), activation="silu", n_init=1)
    with pytest.raises(CompressionError, match="compresses an original block"):
        compress_block(f, "prune", 2, jax.random.PRNGKey(0), activation="silu")


def test_nan_weights_are_refused_by_field_name():
    b = _block()
    bad = GatedMLP(b.w_gate, b.w_up.at[0, 0].set(jnp.nan), b.w_down)
    with pytest.raises(CompressionError, match="w_up contains NaN"):
        compress_block(bad, "prune", 4, jax.random.PRNGKey(0), activation="silu")
