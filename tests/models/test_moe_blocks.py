"""MoEMLP (sparse Mixture-of-Experts, docs/moe.md): forward against float64 maths (dense and
per-token sparse), jit/vmap/grad, routing, counts and FLOPs, the protocol methods that do not
apply, and expert-wise compression: every method maps over the experts with fold_in keys,
fusion at width D reproduces each expert and the layer, routing is untouched."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkfuse.compress import CompressionError, compress_block, param_count
from ntkfuse.models.blocks import (MLP_KINDS, FusedGatedMLP, GatedMLP, MoEMLP, apply_mlp, count_params, fixed_fields,
                                   is_mlp, static_fields)
from ntkfuse.models.blocks.moe import route

d, D, E, TOP = 6, 10, 4, 2


def _rand(seed, *shape, scale=0.5):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


def make_moe(top_k=TOP, seed=0) -> MoEMLP:
    experts = tuple(GatedMLP(_rand(seed + 10 * e + 1, D, d), _rand(seed + 10 * e + 2, D, d),
                             _rand(seed + 10 * e + 3, d, D)) for e in range(E))
    return MoEMLP(_rand(seed + 99, E, d, scale=1.0), experts, top_k)


def _silu(z):
    return z / (1 + np.exp(-z))


def reference(block: MoEMLP, x):
    """Token by token in float64: softmax, top-k, renormalise, Σ_k w_k expert_k(x)."""
    x = np.asarray(x, np.float64).reshape(-1, d)
    f = lambda a: np.asarray(a, np.float64)  # noqa: E731
    out = np.zeros_like(x)
    for t, xt in enumerate(x):
        logits = f(block.router) @ xt
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p)[:block.top_k]
        w = p[top] / p[top].sum()
        for wk, e in zip(w, top):
            ex = block.experts[e]
            out[t] += wk * (f(ex.w_down) @ (_silu(f(ex.w_gate) @ xt) * (f(ex.w_up) @ xt)))
    return out


@pytest.mark.parametrize("top_k", [1, 2, E])
@pytest.mark.parametrize("jit", [False, True])
def test_forward_matches_float64_sparse_maths(top_k, jit):
    block = make_moe(top_k)
    x = _rand(7, 2, 5, d)
    fn = lambda b, x: apply_mlp(b, x, "silu")  # noqa: E731
    got = (jax.jit(fn) if jit else fn)(block, x)
    assert got.shape == x.shape
    np.testing.assert_allclose(np.asarray(got).reshape(-1, d), reference(block, x), rtol=2e-5, atol=2e-5)
    assert block.kind == "moe" and is_mlp(block) and type(block) in MLP_KINDS


def test_routing_weights_are_top_k_and_sum_to_one():
    block = make_moe()
    x = _rand(3, 11, d)
    w, idx = block.routing(x)
    w = np.asarray(w)
    assert idx.shape == (11, TOP) and w.shape == (11, E)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
    assert ((w > 0).sum(-1) == TOP).all()
    assert all(set(np.flatnonzero(w[t])) == set(np.asarray(idx[t]).tolist()) for t in range(11))
    w2, _ = route(block.router, x, TOP)
    np.testing.assert_array_equal(np.asarray(w2), w)


def test_vmap_grad_and_pytree():
    block = make_moe()
    x = _rand(5, 3, 4, d)
    per = jax.vmap(lambda xi: block(xi, jax.nn.silu))(x)
    np.testing.assert_allclose(np.asarray(per), np.asarray(block(x, jax.nn.silu)), rtol=1e-6, atol=1e-6)
    g = jax.grad(lambda b: jnp.sum(b(x, jax.nn.silu) ** 2))(block)
    assert isinstance(g, MoEMLP) and g.top_k == TOP and len(g.experts) == E
    assert float(jnp.abs(g.router).sum()) > 0   # the top-k values carry the router's gradient
    assert static_fields(MoEMLP) == ("top_k", "rule", "capacity") and fixed_fields(MoEMLP) == ()
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(block)[0]]
    assert len(names) == 1 + 3 * E and not any("top_k" in n for n in names)
    back = jax.tree_util.tree_map(lambda a: a, block)
    assert back.experts[0].w_gate is block.experts[0].w_gate and back.top_k == TOP


def test_param_count_flops_width():
    block = make_moe()
    per = 3 * D * d
    assert block.expert_param_counts() == (per,) * E
    assert block.param_count() == count_params(block) == param_count(block) == E * d + E * per
    ex = block.experts[0].flops_per_token()
    assert block.expert_flops_per_token() == (ex,) * E
    router = 2 * E * d + E + 2 * TOP * d
    assert block.flops_per_token() == router + TOP * ex          # only the top-k experts run
    assert block.dense_flops_per_token() == router + E * ex
    assert block.width == D and block.expert_widths == (D,) * E and block.num_experts == E


def test_not_neuron_bundle_and_bad_shapes():
    block = make_moe()
    assert block.neuron_view() is None and block.token_grads is None and not block.compressible
    with pytest.raises(TypeError, match="no probed forward"):
        block.apply_probed(jnp.ones((1, d)), jax.nn.silu, None)
    with pytest.raises(ValueError, match="top_k"):
        MoEMLP(block.router, block.experts, E + 1)
    with pytest.raises(ValueError, match="router has"):
        MoEMLP(block.router[:2], block.experts, 1)
    assert block.sub_blocks() == block.experts
    with pytest.raises(TypeError, match="no sub-blocks"):
        block.experts[0].with_sub_blocks([])


@pytest.mark.parametrize("method", ["fusion", "cluster", "prune", "sketch", "mmd"])
def test_compress_block_maps_over_experts_with_fold_in_keys(method):
    block = make_moe()
    key = jax.random.PRNGKey(3)
    opts = {"n_init": 2} if method in ("fusion", "cluster") else {"steps": 3} if method == "mmd" else {}
    out = compress_block(block, method, 4, key, activation="silu", **opts)
    assert isinstance(out, MoEMLP) and out.router is block.router and out.top_k == TOP
    assert out.expert_widths == (4,) * E
    for e in range(E):
        want = compress_block(block.experts[e], method, 4, jax.random.fold_in(key, e), activation="silu", **opts)
        assert type(out.experts[e]) is type(want)
        for a, b in zip(jax.tree_util.tree_leaves(out.experts[e]), jax.tree_util.tree_leaves(want)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if method == "fusion":
        assert all(isinstance(x, FusedGatedMLP) and float(x.counts.sum()) == D for x in out.experts)
        assert out.param_count() == E * d + E * 3 * 4 * d


def test_fusion_one_neuron_per_cluster_reproduces_experts_and_layer_and_routing():
    block = make_moe()
    out = compress_block(block, "fusion", D, jax.random.PRNGKey(0), activation="silu", n_init=1)
    x = _rand(4, 3, 7, d)
    assert all(np.array_equal(x_.counts, np.ones(D)) for x_ in out.experts)
    for a, b in zip(out.experts, block.experts):
        np.testing.assert_allclose(np.asarray(a(x, jax.nn.silu)), np.asarray(b(x, jax.nn.silu)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out(x, jax.nn.silu)), np.asarray(block(x, jax.nn.silu)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.routing(x)[1]), np.asarray(block.routing(x)[1]))


def test_routing_unchanged_by_any_expert_compression():
    block = make_moe()
    x = _rand(8, 5, d)
    out = compress_block(block, "prune", 3, jax.random.PRNGKey(0), activation="silu")
    for a, b in zip(out.routing(x), block.routing(x)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_svd_is_expert_by_expert():
    """svd factorises every expert on its own (the router untouched); each expert equals svd of that expert."""
    from ntkfuse.models.blocks import LowRankGatedMLP
    block = make_moe()
    out = compress_block(block, "svd", 4, jax.random.PRNGKey(0), activation="silu", rank=2)
    assert out.router is block.router and out.top_k == block.top_k
    for a, b in zip(out.experts, block.experts):
        want = compress_block(b, "svd", 4, jax.random.PRNGKey(0), activation="silu", rank=2)
        assert isinstance(a, LowRankGatedMLP) and a.rank == 2 and a.width == D
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_magnitude_is_one_threshold_over_the_experts():
    """As over layers: one threshold over every expert's W_gate, W_up, W_down (router kept)."""
    block = make_moe()
    block = block.with_sub_blocks([GatedMLP(e.w_gate * s, e.w_up * s, e.w_down * s)
                                   for e, s in zip(block.experts, (1.0, 1.0, 1.0, 0.01))])
    out = compress_block(block, "magnitude", 4, jax.random.PRNGKey(0), activation="silu", sparsity=0.3)
    w = lambda m: np.concatenate([np.asarray(x).ravel() for e in m.experts for x in (e.w_gate, e.w_up, e.w_down)])
    before, after = w(block), w(out)
    removed = (after == 0) & (before != 0)
    assert removed.sum() == round(0.3 * before.size)
    assert np.abs(before[removed]).max() <= np.abs(before[~removed]).min()
    assert np.all(np.asarray(out.experts[3].w_up) == 0)   # the 100× smaller expert loses everything
    assert out.router is block.router and out.expert_widths == (D,) * E


def test_width_checked_per_expert_and_nonfinite_router():
    block = make_moe()
    with pytest.raises(CompressionError, match="expert 0: width"):
        compress_block(block, "prune", D + 1, jax.random.PRNGKey(0), activation="silu")
    bad = MoEMLP(block.router.at[0, 0].set(jnp.nan), block.experts, TOP)
    with pytest.raises(CompressionError, match="NaN"):
        compress_block(bad, "prune", 4, jax.random.PRNGKey(0), activation="silu")
