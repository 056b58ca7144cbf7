"""Gated MLP kinds (GatedMLP, FusedGatedMLP, LowRankGatedMLP): forward against float64 maths,
counts, fixed fields, neuron operations, stacking, and fusion's exact identity at one neuron per
cluster."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkfuse.models.blocks import (MLP_KINDS, FusedGatedMLP, GatedMLP, LowRankGatedMLP, Probes, activation_fn,
                                   apply_mlp, count_params, fixed_fields, is_mlp)

d, D, k, r = 6, 10, 4, 3
COUNTS = (1, 3, 2, 4)
GATED_NAMES = ("gated", "fused_gated", "low_rank_gated")


def _rand(seed, *shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * 0.5, jnp.float32)


def make_gated(kind: str):
    if kind == "gated":
        return GatedMLP(_rand(0, D, d), _rand(1, D, d), _rand(2, d, D))
    if kind == "fused_gated":
        return FusedGatedMLP(_rand(0, k, d), _rand(1, k, d), _rand(2, d, k), COUNTS)
    if kind == "low_rank_gated":
        return LowRankGatedMLP(_rand(0, D, r), _rand(1, r, d), _rand(2, D, r), _rand(3, r, d), _rand(4, d, r),
                               _rand(5, r, D))
    raise AssertionError(kind)


def reference(block, x, act="silu"):
    """y = W_down (n ⊙ σ(W_gate x) ⊙ (W_up x)) in float64 numpy (n = 1 for GatedMLP)."""
    x = np.asarray(x, np.float64)
    f = lambda a: np.asarray(a, np.float64)  # noqa: E731
    if isinstance(block, LowRankGatedMLP):   # W = U V for each matrix
        wg, wu, wd = (f(u) @ f(v) for u, v in ((block.u_gate, block.v_gate), (block.u_up, block.v_up),
                                                (block.u_down, block.v_down)))
    else:
        wg, wu, wd = f(block.w_gate), f(block.w_up), f(block.w_down)
    z = x @ wg.T
    s = z / (1 + np.exp(-z)) if act == "silu" else 0.5 * z * (1 + np.vectorize(math.erf)(z / np.sqrt(2)))
    h = s * (x @ wu.T)
    if isinstance(block, FusedGatedMLP):
        h = h * np.asarray(block.counts, np.float64)
    return h @ wd.T


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("act", ["silu", "gelu"])
@pytest.mark.parametrize("kind", GATED_NAMES)
def test_forward_matches_float64_maths(kind, act, jit):
    block = make_gated(kind)
    x = _rand(9, 2, 5, d)
    fn = lambda b, x: apply_mlp(b, x, act)  # noqa: E731
    got = (jax.jit(fn) if jit else fn)(block, x)
    np.testing.assert_allclose(np.asarray(got), reference(block, x, act), rtol=2e-5, atol=2e-5)
    assert block.kind == kind and is_mlp(block) and type(block) in MLP_KINDS


@pytest.mark.parametrize("kind", ["gated", "fused_gated"])
def test_param_count_flops_width(kind):
    block = make_gated(kind)
    w = D if kind == "gated" else k
    assert block.width == w
    assert block.param_count() == count_params(block) == 3 * w * d   # counts are not parameters
    # 2wd (gate) + 2wd (up) + 2dw (down) + w (σ) + w (gating product) [+ w (diag n)]
    assert block.flops_per_token() == 6 * w * d + 2 * w + (w if kind == "fused_gated" else 0)
    assert block.neuron_view() is None and block.token_grads is None


def test_low_rank_gated_counts_and_protocol():
    """svd's gated kind: width D, rank r, 3r(D+d) parameters; FLOPs of the six factor matmuls plus σ
    and the gating product; no neuron view or token factors (explicit-gradient NTK), not compressible."""
    block = make_gated("low_rank_gated")
    assert block.width == D and block.rank == r and fixed_fields(LowRankGatedMLP) == ()
    assert block.param_count() == count_params(block) == 3 * r * (D + d)
    # gate and up: 2(rd + Dr) each; down: 2(rD + dr); σ: D; gating product: D
    assert block.flops_per_token() == 2 * (r * d + D * r) * 2 + 2 * (r * D + d * r) + 2 * D
    assert block.neuron_view() is None and block.token_grads is None and not block.compressible
    with pytest.raises(TypeError, match="no probed forward"):
        block.apply_probed(jnp.ones((1, d)), activation_fn("silu"), Probes())
    holder, fixed = block.split_fixed()   # nothing fixed: stacking is the block itself
    assert fixed == {} and LowRankGatedMLP.join_fixed(holder, {}) is holder
    g = jax.grad(lambda b: jnp.sum(b(jnp.ones((2, d)), activation_fn("silu"))))(block)
    assert [x.shape for x in jax.tree_util.tree_leaves(g)] == [x.shape for x in jax.tree_util.tree_leaves(block)]


def test_fixed_fields_are_leaves_kept_out_of_gradients():
    from ntkfuse.frozen import trainable_grad
    assert fixed_fields(GatedMLP) == () and fixed_fields(FusedGatedMLP) == ("counts",)
    f = make_gated("fused_gated")
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(f)[0]]
    assert names == [".w_gate", ".w_up", ".w_down", ".counts"] and f.counts.dtype == jnp.float32
    _, g = trainable_grad(lambda b: jnp.sum(b(jnp.ones((2, d)), activation_fn("silu"))))(f)
    assert g.counts is None and [x.shape for x in jax.tree_util.tree_leaves(g)] == [(k, d), (k, d), (d, k)]


def test_fold_and_split_fixed():
    f = make_gated("fused_gated")
    x = _rand(5, 3, d)
    act = activation_fn("silu")
    np.testing.assert_allclose(np.asarray(f.fold()(x, act)), np.asarray(f(x, act)), rtol=1e-5, atol=1e-6)
    holder, fixed = f.split_fixed()
    assert holder.counts is None and fixed["counts"] is f.counts
    np.testing.assert_allclose(np.asarray(FusedGatedMLP.apply_split(holder, fixed, x, act)), np.asarray(f(x, act)),
                               rtol=1e-6, atol=1e-6)
    back = FusedGatedMLP.join_fixed(holder, {"counts": f.counts})
    assert back.counts is f.counts and jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(f)


def test_neuron_operations():
    b = make_gated("gated")
    Z = b.neuron_features()
    assert Z.shape == (D, 3 * d)
    i = 7
    np.testing.assert_array_equal(np.asarray(Z[i]), np.concatenate([b.w_gate[i], b.w_up[i], b.w_down[:, i]]))
    back = b.with_neurons(Z)
    for n in ("w_gate", "w_up", "w_down"):
        np.testing.assert_array_equal(np.asarray(getattr(back, n)), np.asarray(getattr(b, n)))
    idx = jnp.array([1, 4, 8])
    t = b.take_neurons(idx)
    x = _rand(3, 4, d)
    act = activation_fn("silu")
    np.testing.assert_allclose(np.asarray(t(x, act)), reference(b.take_neurons(idx), x), rtol=2e-5, atol=2e-5)
    want = [np.linalg.norm(b.w_gate[j]) * np.linalg.norm(b.w_up[j]) * np.linalg.norm(b.w_down[:, j]) for j in range(D)]
    np.testing.assert_allclose(np.asarray(b.neuron_scores()), want, rtol=1e-5)
    want1 = [np.abs(b.w_gate[j]).sum() * np.abs(b.w_up[j]).sum() * np.abs(b.w_down[:, j]).sum() for j in range(D)]
    np.testing.assert_allclose(np.asarray(b.neuron_scores("l1")), want1, rtol=1e-5)


def test_fusion_identity_one_neuron_per_cluster():
    """With every neuron its own cluster (centroids = neurons, n = 1) fusion is exact."""
    b = make_gated("gated")
    f = b.fuse(b.neuron_features(), np.ones(D, int))
    x = _rand(4, 5, d)
    act = activation_fn("silu")
    np.testing.assert_array_equal(np.asarray(f(x, act)), np.asarray(b(x, act)))


def test_score_bounds_the_neuron_output():
    """For SiLU |σ(t)| ≤ |t|: ‖c_i σ(g_i·x)(u_i·x)‖ ≤ s_i ‖x‖²."""
    b = make_gated("gated")
    x = np.asarray(_rand(11, 50, d), np.float64)
    s = np.asarray(b.neuron_scores(), np.float64)
    for i in range(D):
        one = np.asarray(reference(b.take_neurons(jnp.array([i])), x))
        assert np.all(np.linalg.norm(one, axis=1) <= s[i] * np.sum(x * x, 1) * (1 + 1e-9))
