"""svd and magnitude on whole gated models (docs/gated.md): a tiny random Llama and a tiny random
Mixtral (expert by expert) through `compress`, orbax round trips of the compressed models, and the
NTK's explicit-gradient path on LowRankGatedMLP blocks against per-example `jax.grad`."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkfuse
from ntkfuse.compress import (compress, compress_block, nonzero_params, param_count, restore_compressed,
                              save_compressed, svd_rank_for_width)
from ntkfuse.models import ModelConfig, get_mlp
from ntkfuse.models.blocks import GatedMLP, LowRankGatedMLP, MoEMLP

d, D = 16, 32
COMMON = dict(vocab_size=40, hidden=d, intermediate=D, num_heads=2, num_kv_heads=1, max_positions=32,
              activation="silu", head="lm", layer_norm_eps=1e-6, tie_word_embeddings=False)


def tiny(family):
    extra = dict(num_experts=4, experts_per_token=2) if family == "mixtral" else {}
    cfg = ModelConfig(family=family, num_layers=3, **COMMON, **extra)
    return cfg, ntkfuse.init_params(cfg, jax.random.PRNGKey(0))


def batch(cfg, n=3, t=8):
    ids = np.random.default_rng(1).integers(3, cfg.vocab_size, (n, t)).astype(np.int32)
    mask = np.ones((n, t), np.int32)
    mask[1, 6:] = 0   # right padding
    return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask)}


def units(block):
    """The gated blocks a method compresses: the block itself, or an MoE's experts."""
    return list(block.experts) if isinstance(block, MoEMLP) else [block]


def mats(blocks):
    return np.concatenate([np.asarray(m).ravel() for b in blocks for m in (b.w_gate, b.w_up, b.w_down)])


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_svd_on_a_gated_model(family):
    cfg, p = tiny(family)
    layers, width = [0, 2], 8
    q = compress(cfg, p, "svd", layers, width, jax.random.PRNGKey(3))
    t = svd_rank_for_width(d, D, width)   # 8·16 // 48 = 2
    assert t == 2
    keys = jax.random.split(jax.random.PRNGKey(3), len(layers))
    for key, l in zip(keys, layers):
        old, new = get_mlp(p, l), get_mlp(q, l)
        assert isinstance(new, MoEMLP) == isinstance(old, MoEMLP) == (family == "mixtral")
        if family == "mixtral":   # router untouched, experts factorised one by one
            assert new.router is old.router and new.top_k == old.top_k
        for a in units(new):
            assert isinstance(a, LowRankGatedMLP) and a.rank == t and a.width == D
            assert a.param_count() == 3 * t * (D + d) <= 3 * width * d
        # compress on a layer equals compress_block with that layer's key
        want = compress_block(old, "svd", width, key, activation="silu")
        for x, y in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert get_mlp(q, 1) is get_mlp(p, 1)
    n_units = 4 if family == "mixtral" else 1
    router = 4 * d if family == "mixtral" else 0
    assert param_count(q, layers) == 2 * (router + n_units * 3 * t * (D + d))
    b = batch(cfg)
    out, ref = ntkfuse.jit_forward(cfg, q, b).logits, ntkfuse.jit_forward(cfg, p, b).logits
    assert out.shape == ref.shape and np.all(np.isfinite(np.asarray(out)))
    assert not np.allclose(np.asarray(out), np.asarray(ref), atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_svd_at_full_rank_reproduces_the_model(family):
    """rank = min(D, d): every factor pair is its matrix to float32 rounding, so are the logits."""
    cfg, p = tiny(family)
    q = compress(cfg, p, "svd", [0, 1, 2], 8, jax.random.PRNGKey(0), rank=d)
    b = batch(cfg)
    a, c = np.asarray(ntkfuse.jit_forward(cfg, p, b).logits), np.asarray(ntkfuse.jit_forward(cfg, q, b).logits)
    # measured max |Δ| / max |logit| = 1.2e-7 (llama) and 1.1e-7 (mixtral)
    assert np.abs(c - a).max() < 2e-6 * np.abs(a).max()


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_magnitude_on_a_gated_model_is_one_global_threshold(family):
    cfg, p = tiny(family)
    layers = [0, 2]
    # the last layer 100× smaller: one threshold over all chosen layers (and experts) takes most of it
    small = [GatedMLP(e.w_gate * 0.01, e.w_up * 0.01, e.w_down * 0.01) for e in units(get_mlp(p, 2))]
    p = ntkfuse.replace_mlps(p, {2: small[0] if family == "llama" else get_mlp(p, 2).with_sub_blocks(small)})
    q = compress(cfg, p, "magnitude", layers, 8, jax.random.PRNGKey(0), sparsity=0.3)
    before = mats([u for l in layers for u in units(get_mlp(p, l))])
    after = mats([u for l in layers for u in units(get_mlp(q, l))])
    removed = (after == 0) & (before != 0)
    assert removed.sum() == round(0.3 * before.size)
    assert np.abs(before[removed]).max() <= np.abs(before[~removed]).min()
    assert np.mean(mats(units(get_mlp(q, 2))) == 0) > 0.55
    for l in layers:
        assert all(isinstance(u, GatedMLP) and u.width == D for u in units(get_mlp(q, l)))
        if family == "mixtral":
            np.testing.assert_array_equal(np.asarray(get_mlp(q, l).router), np.asarray(get_mlp(p, l).router))
    # accounting: the parameter count is unchanged, the nonzeros drop by exactly the removed weights
    assert param_count(q, layers) == param_count(p, layers)
    assert nonzero_params(p, layers) - nonzero_params(q, layers) == removed.sum()
    out = np.asarray(ntkfuse.jit_forward(cfg, q, batch(cfg)).logits)
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("family", ["llama", "mixtral"])
@pytest.mark.parametrize("method", ["svd", "magnitude"])
def test_compressed_gated_model_saves_and_restores_bit_identically(family, method, tmp_path):
    cfg, p = tiny(family)
    q = compress(cfg, p, method, [1], 8, jax.random.PRNGKey(0))
    path = save_compressed(tmp_path / "c", cfg, q, {"method": method})
    cfg2, q2, _ = restore_compressed(path)
    assert cfg2 == cfg
    assert jax.tree_util.tree_structure(q2) == jax.tree_util.tree_structure(q)   # kinds survive
    assert type(units(get_mlp(q2, 1))[0]) is (LowRankGatedMLP if method == "svd" else GatedMLP)
    for a, b in zip(jax.tree_util.tree_leaves(q), jax.tree_util.tree_leaves(q2), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    bt = batch(cfg)
    np.testing.assert_array_equal(np.asarray(ntkfuse.jit_forward(cfg, q, bt).logits),
                                  np.asarray(ntkfuse.jit_forward(cfg2, q2, bt).logits))


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_ntk_on_low_rank_gated_blocks_matches_per_example_grads(family):
    """`ntk.kernels` (default plan: explicit gradients, as for any kind without token factors) on a
    model whose layer-1 MLP is LowRankGatedMLP (or an MoE of them) equals G Gᵀ and G sign(G)ᵀ with
    G from `jax.grad` of the output, example by example."""
    from ntkfuse.ntk import kernels, mlp_layers, target_logprob
    cfg, p = tiny(family)
    q = compress(cfg, p, "svd", [1], 8, jax.random.PRNGKey(0))
    b = batch(cfg)
    b["target_mask"] = b["attention_mask"].at[:, :2].set(0)
    res, plan = kernels(cfg, q, b, output=target_logprob(), selector=mlp_layers([1]), return_plan=True)
    assert plan.strategy == "full" and any(path[-1] == "u_gate" for path in plan.blocks[0])
    out = target_logprob()

    def g(i):
        ex = {k: v[i] for k, v in b.items()}
        f = lambda mlp: out(cfg, ntkfuse.replace_mlps(q, {1: mlp}), ex)  # noqa: E731
        grads = jax.grad(f)(get_mlp(q, 1))
        if family == "mixtral":   # the router is differentiable but frozen: the default kernel leaves it out
            assert grads.router.shape == get_mlp(q, 1).router.shape
            grads = dataclasses.replace(grads, router=None)
        return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree_util.tree_leaves(grads)])

    G = np.stack([g(i) for i in range(3)])
    K, S = np.asarray(res["ntk"], np.float64), np.asarray(res["sign"], np.float64)
    assert K.shape == (3, 3) and np.all(np.isfinite(K))
    # measured max |Δ| / max |K| ≤ 1.9e-7 (ntk) and 1.4e-7 (sign): float32 gradients, the same maths
    for got, want in ((K, G @ G.T), (S, G @ np.sign(G).T)):
        assert np.abs(got - want).max() < 2e-6 * np.abs(want).max()
