"""The block protocol: every MLP kind answers the same questions (forward, width, counts,
neuron view, probes, stacking) and the answers agree with direct float64 computations."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkfuse.models.blocks import (MLP_KINDS, DenseMLP, FusedGatedMLP, FusedMLP, LinearMLP, LowRankLinearMLP, LowRankMLP,
                                   MoEMLP,
                                   Probed, Probes, activation_fn, apply_mlp, count_params, fixed_fields, is_mlp,
                                   static_fields)
from tests.models.test_gated_blocks import GATED_NAMES, make_gated
from tests.models.test_moe_blocks import make_moe

d, D, k, r = 6, 10, 4, 3
COUNTS = (1, 3, 2, 4)


def _rand(seed, *shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * 0.5, jnp.float32)


def make(kind: str, bias: bool = True):
    b = (lambda seed, *s: _rand(seed, *s)) if bias else (lambda *a: None)
    if kind == "dense":
        return DenseMLP(_rand(0, D, d), b(1, D), _rand(2, d, D), b(3, d))
    if kind == "fused":
        return FusedMLP(_rand(0, k, d), b(1, k), _rand(2, d, k), b(3, d), COUNTS)
    if kind == "low_rank":
        return LowRankMLP(_rand(0, D, r), _rand(1, r, d), b(2, D), _rand(3, d, r), _rand(4, r, D), b(5, d))
    if kind == "linear":
        return LinearMLP(_rand(0, d, d), b(1, d))
    if kind == "low_rank_linear":
        return LowRankLinearMLP(_rand(0, d, r), _rand(1, r, d), b(2, d))
    raise AssertionError(kind)


KIND_NAMES = ("dense", "fused", "low_rank", "linear", "low_rank_linear")


def _f64(a):
    return None if a is None else np.asarray(a, np.float64)


def reference(block, x, act_name="gelu"):
    """The block's maths in float64 numpy, written from METHOD.md, independent of the code."""
    x = np.asarray(x, np.float64)
    gelu = lambda z: 0.5 * z * (1 + np.vectorize(__import__("math").erf)(z / np.sqrt(2)))  # noqa: E731
    add = lambda y, b: y if b is None else y + _f64(b)   # noqa: E731
    if isinstance(block, (DenseMLP, FusedMLP)):
        h = gelu(add(x @ _f64(block.w1).T, block.b1))
        if isinstance(block, FusedMLP):
            h = h * np.asarray(block.counts, np.float64)
        return add(h @ _f64(block.w2).T, block.b2)
    if isinstance(block, LowRankMLP):
        h = gelu(add(x @ (_f64(block.u1) @ _f64(block.v1)).T, block.b1))
        return add(h @ (_f64(block.u2) @ _f64(block.v2)).T, block.b2)
    if isinstance(block, LinearMLP):
        return add(x @ _f64(block.w).T, block.b)
    return add(x @ (_f64(block.u) @ _f64(block.v)).T, block.b)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_forward_matches_float64_maths(kind, bias, jit):
    block = make(kind, bias)
    x = _rand(9, 2, 5, d)
    fn = (lambda b, x: apply_mlp(b, x, "gelu"))
    got = (jax.jit(fn) if jit else fn)(block, x)
    np.testing.assert_allclose(np.asarray(got), reference(block, x), rtol=2e-5, atol=2e-5)
    assert block.kind == kind and is_mlp(block)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_param_count_and_flops(kind):
    block = make(kind)
    n_leaves = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(block))
    n_fixed = sum(int(np.prod(getattr(block, n).shape)) for n in fixed_fields(block))   # counts: not parameters
    assert block.param_count() == count_params(block) == count_params([block]) == n_leaves - n_fixed
    want_flops = {   # multiply-add = 2 FLOPs, + one per bias element, activation, fusion scaling
        "dense": 2 * D * d * 2 + D + d + D,
        "fused": 2 * k * d * 2 + k + d + k + k,
        "low_rank": 2 * (r * d + D * r) + 2 * (r * D + d * r) + D + d + D,
        "linear": 2 * d * d + d,
        "low_rank_linear": 2 * (d * r + r * d) + d,
    }[kind]
    assert block.flops_per_token() == want_flops
    assert block.width == {"dense": D, "fused": k, "low_rank": D, "linear": 0, "low_rank_linear": r}[kind]


def test_fixed_fields_are_float32_leaves_that_never_train():
    from ntkfuse.frozen import frozen_mask, split_frozen, trainable_grad
    assert fixed_fields(FusedMLP) == ("counts",) and fixed_fields(FusedGatedMLP) == ("counts",)
    assert all(fixed_fields(cls) == () for cls in MLP_KINDS if cls not in (FusedMLP, FusedGatedMLP))
    assert all(static_fields(cls) == () for cls in MLP_KINDS if cls is not MoEMLP)
    f = make("fused")
    assert f.counts.dtype == jnp.float32 and f.counts.shape == (k,)
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(f)[0]]
    assert any("counts" in n for n in names)   # a leaf: no treedef difference between cluster-size vectors
    assert jax.tree_util.tree_structure(f) == jax.tree_util.tree_structure(
        FusedMLP(f.w1, f.b1, f.w2, f.b2, (4, 3, 2, 1)))
    assert frozen_mask(f) == FusedMLP(False, False, False, False, True)
    loss = lambda b: jnp.sum(b(jnp.ones((2, d)), activation_fn("gelu")))   # noqa: E731
    _, g = trainable_grad(loss)(f)
    assert g.counts is None and split_frozen(f)[1].counts is f.counts   # no gradient is formed for the counts
    np.testing.assert_array_equal(np.asarray(g.w1), np.asarray(jax.grad(loss)(f).w1))


@pytest.mark.parametrize("kind", ["dense", "fused"])
def test_neuron_view_runs_the_same_forward(kind):
    from ntkfuse.models.blocks import neuron_forward
    block = make(kind)
    x = _rand(5, 7, d)
    act = activation_fn("gelu")
    np.testing.assert_array_equal(np.asarray(neuron_forward(block.neuron_view(), x, act)), np.asarray(block(x, act)))


@pytest.mark.parametrize("kind", ["low_rank", "linear", "low_rank_linear"])
def test_kinds_without_neurons_have_no_view_or_probe(kind):
    block = make(kind)
    assert block.neuron_view() is None and block.token_grads is None and not block.compressible
    with pytest.raises(TypeError, match="no probed forward"):
        block.apply_probed(jnp.ones((1, d)), activation_fn("gelu"), Probes())


@pytest.mark.parametrize("kind", ["dense", "fused"])
def test_probe_gradients_are_token_factors(kind):
    """Zero probes leave the forward unchanged; their gradients are δ (cotangents) and u (activations),
    and Σ_t δ_t u_tᵀ is the weight gradient the `tokens` NTK path relies on (token_grads)."""
    block = make(kind)
    act = activation_fn("gelu")
    x = _rand(4, 5, d)
    w = block.factor_widths()
    zeros = Probes(**{f: jnp.zeros((5, n)) for f, n in w.items()})
    np.testing.assert_array_equal(np.asarray(Probed(block, zeros)(x, act)), np.asarray(block(x, act)))
    loss = lambda b, pr: jnp.sum(jnp.sin(Probed(b, pr)(x, act)))   # noqa: E731
    gb, gp = jax.grad(loss, argnums=(0, 1))(block, zeros)
    gp = gp._asdict()
    for leaf, (delta, u) in block.token_grads.items():
        want = gp[delta].sum(0) if u is None else gp[delta].T @ gp[u]
        np.testing.assert_allclose(np.asarray(getattr(gb, leaf)), np.asarray(want), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_split_fixed_roundtrip_and_forward(kind):
    block = make(kind)
    holder, fixed = block.split_fixed()
    assert set(fixed) == set(fixed_fields(block))
    assert all(getattr(holder, n) is None for n in fixed)   # the holder carries only trainable arrays
    x = _rand(6, 3, d)
    act = activation_fn("gelu")
    np.testing.assert_allclose(np.asarray(type(block).apply_split(holder, fixed, x, act)),
                               np.asarray(block(x, act)), rtol=1e-6, atol=1e-6)
    back = type(block).join_fixed(holder, fixed)
    assert type(back) is type(block) and jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(block)
    assert all(getattr(back, n) is getattr(block, n) for n in fixed)


def test_dense_neuron_operations():
    block = make("dense")
    Z = block.neuron_features()
    assert Z.shape == (D, 2 * d + 1)
    same = block.with_neurons(Z)
    for a, b in zip(jax.tree_util.tree_leaves(same), jax.tree_util.tree_leaves(block)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    idx = jnp.array([1, 4, 7])
    sub = block.take_neurons(idx)
    np.testing.assert_array_equal(np.asarray(sub.neuron_features()), np.asarray(Z[idx]))
    scores = np.linalg.norm(np.asarray(block.w1), axis=1) * np.linalg.norm(np.asarray(block.w2), axis=0)
    np.testing.assert_allclose(np.asarray(block.neuron_scores()), scores, rtol=1e-6)
    # Fusion with every neuron its own cluster (count 1) is the block itself.
    f = FusedMLP.from_neurons(block, Z, np.ones(D, int))
    x = _rand(8, 4, d)
    np.testing.assert_allclose(np.asarray(apply_mlp(f, x, "gelu")), np.asarray(apply_mlp(block, x, "gelu")),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(apply_mlp(make("fused").fold(), x, "gelu")),
                               np.asarray(apply_mlp(make("fused"), x, "gelu")), rtol=1e-5, atol=1e-6)


def test_apply_mlp_rejects_non_blocks():
    with pytest.raises(TypeError, match="not an MLP block"):
        apply_mlp({"w1": jnp.ones((2, 2))}, jnp.ones((1, 2)), "gelu")
    with pytest.raises(ValueError, match="unknown activation"):
        activation_fn("swish")


@pytest.mark.parametrize("cls", MLP_KINDS)
def test_every_kind_is_a_frozen_dataclass_pytree(cls):
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    # the gated and MoE kinds' own tests are in test_gated_blocks.py and test_moe_blocks.py
    assert cls.kind in KIND_NAMES + GATED_NAMES + ("moe",)
    block = make(cls.kind) if cls.kind in KIND_NAMES else make_gated(cls.kind) if cls.kind in GATED_NAMES \
        else make_moe()
    assert jax.tree_util.tree_leaves(block)
