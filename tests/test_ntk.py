"""Empirical NTK engine: every kernel against a float64 brute-force Jacobian, and the
identities between strategies (chunked, parameter blocks, Jacobian-free tokens)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkfuse
from ntkfuse import ntk
from ntkfuse.models import DenseMLP, FusedMLP, replace_mlps

KINDS = ("ntk", "sign", "sign_sym")


def _roberta_cfg():
    return ntkfuse.ModelConfig(family="roberta", vocab_size=50, hidden=16, intermediate=24, num_layers=3,
                               num_heads=2, max_positions=40, type_vocab_size=1, pad_token_id=1, num_labels=3)


def _params(cfg, seed=0, scale=6.0):
    # N(0, 0.02) init gives near-constant outputs; scale up so gradients are not tiny.
    p = ntkfuse.init_params(cfg, jax.random.PRNGKey(seed))
    return jax.tree_util.tree_map(lambda a: a * scale if a.ndim >= 1 and a.shape[0] > 1 else a, p)


def _batch(rng, lengths, vocab=50, pad=1, t=None):
    t = t or max(lengths)
    ids = np.full((len(lengths), t), pad, np.int32)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(3, vocab, n)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def model():
    cfg = _roberta_cfg()
    params = _params(cfg)
    # Layer 2 as a fusion block with non-trivial counts: the kernel must use the fixed scaling.
    m = params["layers"][2]["mlp"]
    k = 10
    fused = FusedMLP(m.w1[:k], m.b1[:k], m.w2[:, :k] / 2.0, m.b2, counts=tuple([1, 2, 3, 1, 2, 1, 1, 4, 1, 3]))
    params = replace_mlps(params, {2: fused})
    return cfg, params


def _bruteforce(cfg, params, batch, selector, output, batch2=None):
    """float64 G via an explicit jax.jacrev of the stacked outputs, flattened; kernels in numpy float64."""
    def G_of(b):
        with jax.enable_x64(True):
            p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a, np.float64)), params)
            sel, rest = selector.split(p64)
            b64 = {k: jnp.asarray(v) for k, v in b.items()}

            def f(s):
                full = ntk.Selector.merge(s, rest)
                return jnp.stack([output(cfg, full, {k: v[i] for k, v in b64.items()})
                                  for i in range(b64["input_ids"].shape[0])])

            jac = jax.jacrev(f)(sel)
            leaves = jax.tree_util.tree_leaves(jac)
            return np.concatenate([np.asarray(l, np.float64).reshape(l.shape[0], -1) for l in leaves], 1)

    g1 = G_of(batch)
    g2 = g1 if batch2 is None else G_of(batch2)
    return {"ntk": g1 @ g2.T, "sign": g1 @ np.sign(g2).T, "sign_sym": np.sign(g1) @ np.sign(g2).T}, g1


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_x64_is_off_outside_tests():
    assert not jax.config.jax_enable_x64


@pytest.mark.parametrize("selector", [ntk.all_mlps(), ntk.mlp_layers([0, 2]),
                                      ntk.by_path(lambda p: p[0] == "head" or p[-1] == "w2")],
                         ids=["all_mlps", "layers02", "head_and_w2"])
def test_kernels_match_float64_bruteforce(model, selector):
    cfg, params = model
    batch = _batch(np.random.default_rng(0), [7, 5, 7, 3])
    out = ntk.class_prob(0)
    ref, g = _bruteforce(cfg, params, batch, selector, out)
    assert np.linalg.norm(g) > 1e-3  # gradients are not trivially zero
    got = ntk.kernels(cfg, params, batch, output=out, selector=selector, kinds=KINDS, strategy="full")
    assert not jax.config.jax_enable_x64
    for k in KINDS:
        assert got[k].dtype == jnp.float32 and got[k].shape == (4, 4)
        assert _rel(got[k], ref[k]) < 2e-5, k
    # the sign kernel is genuinely asymmetric, the others symmetric
    assert _rel(ref["sign"].T, ref["sign"]) > 1e-3
    np.testing.assert_allclose(np.asarray(got["ntk"]), np.asarray(got["ntk"]).T, rtol=1e-5, atol=1e-9)


def test_per_example_grads_match_bruteforce(model):
    cfg, params = model
    batch = _batch(np.random.default_rng(1), [6, 4, 6])
    sel = ntk.mlp_layers(1)
    _, g = _bruteforce(cfg, params, batch, sel, ntk.logit(1))
    got = ntk.flatten_grads(ntk.per_example_grads(cfg, params, batch, output=ntk.logit(1), selector=sel, chunk=2))
    assert got.shape == g.shape == (3, 2 * 16 * 24 + 24 + 16)
    assert _rel(got, g) < 1e-5


def test_cross_kernel_matches_bruteforce(model):
    cfg, params = model
    rng = np.random.default_rng(2)
    b1, b2 = _batch(rng, [6, 4, 6]), _batch(rng, [5, 8])
    out, sel = ntk.logit_diff(0, 2), ntk.all_mlps()
    ref, _ = _bruteforce(cfg, params, b1, sel, out, batch2=b2)
    got = ntk.kernels(cfg, params, b1, batch2=b2, output=out, selector=sel, kinds=KINDS, strategy="full")
    for k in KINDS:
        assert got[k].shape == (3, 2)
        assert _rel(got[k], ref[k]) < 2e-5, k


def test_lm_target_logprob_matches_bruteforce():
    cfg = ntkfuse.ModelConfig(family="gpt2", vocab_size=40, hidden=16, intermediate=32, num_layers=2, num_heads=2,
                              max_positions=16, activation="gelu_tanh", layer_norm_eps=1e-5, type_vocab_size=0,
                              head="lm")
    params = _params(cfg, seed=3, scale=4.0)
    rng = np.random.default_rng(3)
    batch = _batch(rng, [6, 4, 6], vocab=40, pad=0)
    tm = batch["attention_mask"].copy()
    tm[:, :2] = 0   # the prompt is not a target
    batch["target_mask"] = tm
    for red in ("sum", "mean"):
        out = ntk.target_logprob(red)
        ref, _ = _bruteforce(cfg, params, batch, ntk.all_mlps(), out)
        got = ntk.kernels(cfg, params, batch, output=out, kinds=KINDS, strategy="full")
        for k in KINDS:
            assert _rel(got[k], ref[k]) < 2e-5, (red, k)
    # the convention: token t is scored by position t-1
    ex = {k: jnp.asarray(v[0]) for k, v in batch.items()}
    logits = ntkfuse.forward(cfg, params, {"input_ids": ex["input_ids"][None]}).logits[0]
    lp = jax.nn.log_softmax(logits, -1)
    hand = sum(float(lp[t - 1, ex["input_ids"][t]]) for t in range(2, 6))
    assert abs(float(ntk.target_logprob("sum")(cfg, params, ex)) - hand) < 1e-4
    assert abs(float(ntk.target_logprob("mean")(cfg, params, ex)) - hand / 4) < 1e-5


def test_chunked_and_blocks_equal_full(model):
    cfg, params = model
    batch = _batch(np.random.default_rng(4), [7, 5, 7, 3, 6])
    full = ntk.kernels(cfg, params, batch, kinds=KINDS, strategy="full")
    chunked, plan = ntk.kernels(cfg, params, batch, kinds=KINDS, strategy="full", chunk=2, return_plan=True)
    assert plan.chunk == 2
    blocks, plan = ntk.kernels(cfg, params, batch, kinds=KINDS, param_block=500, chunk=3, return_plan=True)
    assert plan.strategy == "blocks" and len(plan.blocks) > 2
    assert sorted(p for b in plan.blocks for p in b) == sorted(ntk.all_mlps().paths(params))
    for k in KINDS:
        np.testing.assert_allclose(chunked[k], full[k], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(blocks[k], full[k], rtol=1e-5, atol=1e-7)


def test_memory_budget_picks_blocks(model):
    cfg, params = model
    batch = _batch(np.random.default_rng(5), [4, 4])
    p_small = ntk.plan_kernels(cfg, params, batch, memory_budget_bytes=30_000)
    p_big = ntk.plan_kernels(cfg, params, batch, memory_budget_bytes=2**30)
    assert p_big.strategy == "full" and p_small.strategy == "blocks" and len(p_small.blocks) > 1


def test_padding_does_not_change_kernel(model):
    cfg, params = model
    rng = np.random.default_rng(6)
    short = _batch(rng, [5, 3, 6])
    long = {k: np.pad(v, ((0, 0), (0, 7)), constant_values=(1 if k == "input_ids" else 0))
            for k, v in short.items()}
    a = ntk.kernels(cfg, params, short, kinds=KINDS, strategy="full")
    b = ntk.kernels(cfg, params, long, kinds=KINDS, strategy="full")
    cross = ntk.kernels(cfg, params, short, batch2=long, kinds=("ntk",), strategy="full")
    for k in KINDS:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(cross["ntk"], a["ntk"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("selector", [ntk.all_mlps(), ntk.by_path(lambda p: p[0] == "layers" and p[1] != 1
                                                                   and p[-1] in ("w1", "b2"))],
                         ids=["all_mlps", "partial"])
def test_tokens_path_equals_explicit(model, selector):
    cfg, params = model
    rng = np.random.default_rng(7)
    b1, b2 = _batch(rng, [5, 3, 6]), _batch(rng, [4, 2])
    for other in (None, b2):
        exp = ntk.kernels(cfg, params, b1, batch2=other, kinds=("ntk",), selector=selector, strategy="full")
        tok, plan = ntk.kernels(cfg, params, b1, batch2=other, kinds=("ntk",), selector=selector,
                                strategy="tokens", return_plan=True)
        assert plan.strategy == "tokens"
        np.testing.assert_allclose(tok["ntk"], exp["ntk"], rtol=2e-5, atol=1e-7)


def test_tokens_path_chosen_when_cheaper():
    # Very wide layers and two-token sequences: T²(D+d) ≪ D·d.
    cfg = ntkfuse.ModelConfig(family="bert", vocab_size=30, hidden=32, intermediate=512, num_layers=1, num_heads=2,
                              max_positions=8)
    params = _params(cfg, seed=8, scale=3.0)
    batch = _batch(np.random.default_rng(8), [2, 2, 1], vocab=30, pad=0)
    plan = ntk.plan_kernels(cfg, params, batch, kinds=("ntk",))
    assert plan.strategy == "tokens" and plan.flops["tokens"] < plan.flops["full"]
    assert ntk.plan_kernels(cfg, params, batch, kinds=("ntk", "sign")).strategy == "full"
    got = ntk.kernels(cfg, params, batch, kinds=("ntk",))
    exp = ntk.kernels(cfg, params, batch, kinds=("ntk",), strategy="full")
    np.testing.assert_allclose(got["ntk"], exp["ntk"], rtol=2e-5, atol=1e-8)


def test_selectors_pick_exact_leaves(model):
    cfg, params = model
    mlp = lambda l: [("layers", l, "mlp", n) for n in ("w1", "b1", "w2", "b2")]  # noqa: E731
    assert ntk.mlp_layers([2, 0]).paths(params) == mlp(0) + mlp(2)
    assert ntk.mlp_layers(1).paths(params) == mlp(1)
    assert ntk.all_mlps().paths(params) == mlp(0) + mlp(1) + mlp(2)
    all_paths = ntk.all_params().paths(params)
    assert len(all_paths) == len(jax.tree_util.tree_leaves(params))
    assert ("embed", "word") in all_paths and ("layers", 0, "attn", "qkv", "w") in all_paths
    assert not any(p[-1] == "counts" for p in all_paths)   # fused counts are static, never a leaf
    heads = ntk.by_path(lambda p: p[0] == "head").paths(params)
    assert heads == [("head", "dense", "b"), ("head", "dense", "w"), ("head", "out", "b"), ("head", "out", "w")]
    sel, rest = ntk.mlp_layers(1).split(params)
    assert sum(x.size for x in jax.tree_util.tree_leaves(sel)) == 2 * 16 * 24 + 24 + 16
    assert len(jax.tree_util.tree_leaves(sel)) + len(jax.tree_util.tree_leaves(rest)) == len(all_paths)
    merged = ntk.Selector.merge(sel, rest)
    assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(params)
    for a, b in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(params)):
        assert a is b
    with pytest.raises(ntk.SelectorError, match="out of range"):
        ntk.mlp_layers(7).validate(params)
    with pytest.raises(ntk.SelectorError, match="picks no parameters"):
        ntk.by_path(lambda p: False).validate(params)


def test_fused_counts_one_equals_dense(model):
    cfg, params = model
    m = params["layers"][1]["mlp"]
    fused = replace_mlps(params, {1: FusedMLP(m.w1, m.b1, m.w2, m.b2, counts=(1,) * m.w1.shape[0])})
    batch = _batch(np.random.default_rng(9), [6, 4, 5])
    sel = ntk.mlp_layers([1, 2])
    a = ntk.kernels(cfg, params, batch, kinds=KINDS, selector=sel, strategy="full")
    b = ntk.kernels(cfg, fused, batch, kinds=KINDS, selector=sel, strategy="full")
    for k in KINDS:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-9)
    # counts ≠ 1 change the kernel (the scaling is in the forward and in the gradients)
    m2 = params["layers"][2]["mlp"]
    other = replace_mlps(params, {2: FusedMLP(m2.w1, m2.b1, m2.w2, m2.b2, counts=(1,) * m2.w1.shape[0])})
    c = ntk.kernels(cfg, other, batch, kinds=("ntk",), selector=sel, strategy="full")
    assert _rel(c["ntk"], a["ntk"]) > 1e-2


def test_bfloat16_compute_is_close(model):
    cfg, params = model
    batch = _batch(np.random.default_rng(10), [6, 4, 6])
    a = ntk.kernels(cfg, params, batch, kinds=("ntk", "sign"), strategy="full")
    b = ntk.kernels(cfg, params, batch, kinds=("ntk", "sign"), strategy="full", compute_dtype="bfloat16")
    for k in a:
        assert b[k].dtype == jnp.float32
        assert _rel(b[k], a[k]) < 0.1


def test_bad_arguments(model):
    cfg, params = model
    batch = _batch(np.random.default_rng(11), [3, 3])
    with pytest.raises(ntk.NTKConfigError, match="valid: ntk, sign, sign_sym"):
        ntk.kernels(cfg, params, batch, kinds=("ntk", "adam"))
    with pytest.raises(ntk.NTKConfigError, match="valid: auto"):
        ntk.kernels(cfg, params, batch, strategy="fastest")
    with pytest.raises(ntk.NTKConfigError, match="chunk"):
        ntk.kernels(cfg, params, batch, chunk=0)
    with pytest.raises(ntk.NTKConfigError, match="tokens"):
        ntk.kernels(cfg, params, batch, kinds=("ntk", "sign"), strategy="tokens")
    with pytest.raises(ntk.OutputError, match="out of range"):
        ntk.kernels(cfg, params, batch, output=ntk.class_prob(5))
    with pytest.raises(ntk.OutputError, match="LM head"):
        ntk.kernels(cfg, params, batch, output=ntk.target_logprob())
    with pytest.raises(ntk.OutputError):
        ntk.target_logprob("max")
