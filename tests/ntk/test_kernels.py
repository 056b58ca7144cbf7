"""Empirical NTK engine: every kernel against a float64 brute-force Jacobian, and the
identities between strategies (chunked, parameter blocks, Jacobian-free tokens).

Compilation dominates on CPU, so the tests share one tiny model, one brute-force
Jacobian of ALL parameters (any selector's reference kernel is a column subset of it)
and a handful of kernel calls.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkfuse
from ntkfuse import ntk
from ntkfuse.models import FusedMLP, replace_mlps

KINDS = ("ntk", "sign", "sign_sym")
N1 = 3  # rows [0, N1) of the shared batch are "batch 1" of the cross kernels, the rest "batch 2"


def _params(cfg, seed, scale):
    # N(0, 0.02) init gives near-constant outputs; scale the body up so gradients are not tiny (not the
    # classifier head: a saturated tanh has float32 derivative exactly 0, float64 not).
    p = jax.jit(ntkfuse.init_params, static_argnums=0)(cfg, jax.random.PRNGKey(seed))
    body = jax.tree_util.tree_map(lambda a: a * scale if a.shape[0] > 1 else a, {k: v for k, v in p.items() if k != "head"})
    return {**p, **body}


def _batch(rng, lengths, vocab, pad, t=None):
    t = t or max(lengths)
    ids = np.full((len(lengths), t), pad, np.int32)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(3, vocab, n)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _rows(batch, sl):
    return {k: v[sl] for k, v in batch.items()}


def _bruteforce_G(cfg, params, batch, output):
    """{path: float64 (N, P_leaf)}: explicit jax.jacrev of the N stacked outputs w.r.t. ALL params, in float64
    (fixed leaves, fusion's counts, are not parameters: dropped)."""
    from ntkfuse.frozen import frozen_mask
    fixed = jax.tree_util.tree_leaves(frozen_mask(params, train_router=True))
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a, np.float64)), params)
        b = {k: jnp.asarray(v) for k, v in batch.items()}
        f = lambda p: jax.vmap(lambda ex: output(cfg, p, ex))(b)  # noqa: E731
        jac = jax.jit(jax.jacrev(f))(p64)
        n = batch["input_ids"].shape[0]
        leaves = [np.asarray(l, np.float64).reshape(n, -1) for l in jax.tree_util.tree_leaves(jac)]
    assert not jax.config.jax_enable_x64
    return {p: g for p, g, f in zip(ntk.selectors.leaf_paths(params), leaves, fixed, strict=True) if not f}


def _ref(G, selector, rows1=slice(None), rows2=slice(None)):
    g = np.concatenate([G[p] for p in G if selector(p)], axis=1)
    g1, g2 = g[rows1], g[rows2]
    return {"ntk": g1 @ g2.T, "sign": g1 @ np.sign(g2).T, "sign_sym": np.sign(g1) @ np.sign(g2).T}


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _roberta_base_shapes():
    """roberta-base's config and its params as shapes only (planner tests: nothing is allocated)."""
    cfg = ntkfuse.ModelConfig(family="roberta", vocab_size=50265, hidden=768, intermediate=3072, num_layers=12,
                              num_heads=12, max_positions=514, type_vocab_size=1, pad_token_id=1, num_labels=2)
    return cfg, jax.eval_shape(lambda k: ntkfuse.init_params(cfg, k), jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def model():
    """RoBERTa-shaped, 2 layers; layer 1 is a fusion block with non-trivial counts."""
    cfg = ntkfuse.ModelConfig(family="roberta", vocab_size=50, hidden=16, intermediate=24, num_layers=2,
                              num_heads=2, max_positions=40, type_vocab_size=1, pad_token_id=1, num_labels=3)
    params = _params(cfg, 0, 6.0)
    m = params["layers"][1]["mlp"]
    k = 10
    fused = FusedMLP(m.w1[:k], m.b1[:k], m.w2[:, :k] / 2.0, m.b2, counts=(1, 2, 3, 1, 2, 1, 1, 4, 1, 3))
    params = replace_mlps(params, {1: fused})
    batch = _batch(np.random.default_rng(0), [7, 5, 7, 3, 6], cfg.vocab_size, cfg.pad_token_id)
    G = _bruteforce_G(cfg, params, batch, ntk.class_prob(0))
    full = ntk.kernels(cfg, params, batch, kinds=KINDS, strategy="full")
    return cfg, params, batch, G, full


def test_x64_only_inside_tests():
    assert not jax.config.jax_enable_x64


def test_kernels_match_float64_bruteforce(model):
    cfg, params, batch, G, full = model
    ref = _ref(G, ntk.all_mlps())
    assert sum(G[p].shape[1] for p in ntk.all_mlps().paths(params)) == 2 * 16 * 24 + 24 + 16 + 2 * 16 * 10 + 10 + 16
    assert np.linalg.norm(ref["ntk"]) > 1e-4   # gradients are not trivially zero
    assert _rel(ref["sign"].T, ref["sign"]) > 1e-3   # the sign kernel is genuinely asymmetric
    for k in KINDS:
        assert full[k].dtype == jnp.float32 and full[k].shape == (5, 5)
        assert _rel(full[k], ref[k]) < 2e-5, k


def test_other_selector_and_cross_kernel_match_bruteforce(model):
    cfg, params, batch, G, _ = model
    sel = ntk.by_path(lambda p: p[0] == "head" or p[-1] == "w2" or p[:2] == ("embed", "ln"))
    b1, b2 = _rows(batch, slice(0, N1)), _rows(batch, slice(N1, None))
    got = ntk.kernels(cfg, params, b1, batch2=b2, selector=sel, kinds=KINDS, strategy="full")
    ref = _ref(G, sel, slice(0, N1), slice(N1, None))
    for k in KINDS:
        assert got[k].shape == (N1, 5 - N1)
        assert _rel(got[k], ref[k]) < 2e-5, k


def test_per_example_grads_match_bruteforce(model):
    cfg, params, batch, G, _ = model
    sel = ntk.mlp_layers(1)
    got = ntk.flatten_grads(ntk.per_example_grads(cfg, params, batch, selector=sel, chunk=2))
    ref = np.concatenate([G[p] for p in sel.paths(params)], axis=1)
    assert got.shape == ref.shape == (5, 2 * 16 * 10 + 10 + 16)
    assert _rel(got, ref) < 1e-5


def test_chunked_and_blocks_equal_full(model):
    cfg, params, batch, _, full = model
    chunked, plan = ntk.kernels(cfg, params, batch, kinds=KINDS, strategy="full", chunk=2, return_plan=True)
    assert plan.strategy == "full" and plan.chunk == 2
    blocks, plan = ntk.kernels(cfg, params, batch, kinds=KINDS, param_block=900, return_plan=True)
    assert plan.strategy == "blocks" and len(plan.blocks) == 2
    assert sorted(p for b in plan.blocks for p in b) == sorted(ntk.all_mlps().paths(params))
    for k in KINDS:
        np.testing.assert_allclose(chunked[k], full[k], rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(blocks[k], full[k], rtol=1e-5, atol=1e-8)


def _sliced_dot_operands(jaxpr) -> list:
    """dot_generals with an operand that is, through reshapes and casts, a `slice`, in `jaxpr` and the
    jitted programs it calls (not inside loops: the model's own forward, e.g. a classifier's
    first-token slice, runs inside the chunks' lax.map)."""
    from jax.extend import core as jcore
    bad, origin = [], {}
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("pjit", "jit"):
            for sub in jcore.jaxprs_in_params(eqn.params):
                bad += _sliced_dot_operands(sub)
        name = eqn.primitive.name
        srcs = [origin.get(v) for v in eqn.invars if isinstance(v, jcore.Var)]
        if name == "dot_general" and any(src == "slice" for src in srcs):
            bad.append(eqn)
        for v in eqn.outvars:
            origin[v] = "slice" if name == "slice" else (
                srcs[0] if name in ("reshape", "convert_element_type", "squeeze") and srcs else name)
    return bad


@pytest.mark.parametrize("chunk", [2, 3])
def test_padded_chunks_multiply_unsliced_rows(model, chunk):
    """5 examples in chunks of 2 or 3 pad the last chunk. The Gram must multiply the padded rows and
    drop the padded rows of its result, never multiply row slices: on an H100 without Triton GEMMs
    XLA fused such a slice into the dot and summed the Gram with 3.5e-3 relative error (a
    GPU-only effect; this test pins the program shape that avoids it)."""
    cfg, params, batch, _, full = model
    f = lambda p: ntk.kernels(cfg, p, batch, kinds=KINDS, strategy="full", chunk=chunk)   # noqa: E731
    from ntkfuse.compile import autotune
    with autotune(True):   # the same traced program; only top-level jits may carry compiler options
        closed = jax.make_jaxpr(f)(params)
    assert not _sliced_dot_operands(closed.jaxpr)
    got = f(params)
    for k in KINDS:
        assert got[k].shape == (5, 5)
        np.testing.assert_allclose(got[k], full[k], rtol=1e-5, atol=1e-8)


def test_padded_chunk_guard_sees_a_sliced_dot():
    """The guard above can fail: a Gram of row-sliced operands is reported."""
    g = lambda a: (a[:5] @ a[:5].T)   # noqa: E731
    assert len(_sliced_dot_operands(jax.make_jaxpr(g)(jnp.ones((6, 4))).jaxpr)) == 1


def test_split_k_pieces_fill_whole_waves():
    """The H100 measurement behind the rule (docs/bench/gram_h100.json): a 128 × 128 Gram over 2.36 M
    columns ran in 66 ms as 256 pieces (1.94 waves of one tile each on 132 SMs), 88 ms as 288 pieces
    (2.18 waves: a nearly empty third wave), 102 ms as 144 (1.09 waves), 92 ms unsplit."""
    km = ntk.kernels_module
    assert km._split_k_pieces(768 * 3072, 128, 128, 132) == 256
    assert km._split_k_pieces(768 * 3072, 96, 96, 132) == 256               # ntk_compare's N = 96: one tile too
    for p, n, sms in [(768 * 3072, 128, 108), (768 * 3072, 256, 132), (2048 * 5632, 128, 114), (147456, 1024, 132)]:
        b = km._split_k_pieces(p, n, n, sms)
        tiles = (-(-n // km.GEMM_TILE)) ** 2
        waves = b * tiles / sms
        assert b > 1 and p % b == 0 and km.SPLIT_K_MIN <= p // b <= km.SPLIT_K_MAX, (p, n, sms, b)
        assert waves >= 1.5 and waves / np.ceil(waves) > 0.85, (p, n, sms, b)
    assert km._split_k_pieces(768 * 3072, 4096, 4096, 132) == 1             # the output alone fills the GPU
    assert km._split_k_pieces(3072, 128, 128, 132) == 1                     # a bias: too short to split


def test_split_k_gram_equals_unsplit(model, monkeypatch):
    """The split Gram (GPU without autotuning only; forced here with small pieces) is one batched dot
    over K pieces, and every kernel stays equal to the float64 brute force."""
    cfg, params, batch, G, full = model
    km = ntk.kernels_module
    monkeypatch.setattr(km, "_split_k_applies", lambda: True)
    monkeypatch.setattr(km, "SPLIT_K_MIN", 32)
    monkeypatch.setattr(km, "_sm_count", lambda: 4)
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 768))
    y = jax.random.normal(jax.random.PRNGKey(2), (5, 768))
    assert km._split_k_pieces(768, 6, 5, 4) > 1
    dots = [e for e in jax.make_jaxpr(km._dot_t)(x, y).jaxpr.eqns if e.primitive.name == "dot_general"]
    assert len(dots) == 1 and dots[0].params["dimension_numbers"][1] == ((1,), (1,))   # batched over pieces
    ref = np.asarray(x, np.float64) @ np.asarray(y, np.float64).T
    np.testing.assert_allclose(km._dot_t(x, y), ref, rtol=1e-5, atol=1e-5)
    jax.clear_caches()   # the engine's programs are traced again with the split
    try:
        got = ntk.kernels(cfg, params, batch, kinds=KINDS, strategy="full")
        ref = _ref(G, ntk.all_mlps())
        for k in KINDS:
            assert _rel(got[k], ref[k]) < 2e-5, k
            np.testing.assert_allclose(got[k], full[k], rtol=1e-4, atol=1e-7)
    finally:
        jax.clear_caches()


def test_plan_counts_the_split_gram_copy(monkeypatch):
    """With the Gram split along K (GPU, no autotuning) XLA keeps a piece-major copy of a leaf (measured:
    N = 1024 peak 14.5 -> 17.9 GB): the plan charges it where the split applies, not where the output
    alone fills the GPU (N = 4096)."""
    km = ntk.kernels_module
    cfg, params = _roberta_base_shapes()
    monkeypatch.setattr(km, "_sm_count", lambda: 132)

    def plan(n, split):
        monkeypatch.setattr(km, "_split_k_applies", lambda: split)
        ids = np.zeros((n, 128), np.int32)
        return ntk.plan_kernels(cfg, params, {"input_ids": ids, "attention_mask": np.ones_like(ids)},
                                selector=ntk.mlp_layers(range(4, 12)), memory_budget_bytes=int(51.0e9))
    assert plan(1024, False).d_chunks[0] == 2 and plan(1024, True).d_chunks[0] == 3
    assert plan(4096, False) == plan(4096, True)


def test_layer_factors_keep_padded_rows(model):
    """The layers strategy's factors keep the padded rows of the last chunk (the kernel drops them):
    slicing them off inside the program copied every factor (25.8 GB at roberta-base N = 4096, 53.5 GB
    peak against a 51 GB budget on an H100)."""
    cfg, params, batch, _, _ = model
    km = ntk.kernels_module
    b = km._prepare(cfg, batch, ntk.class_prob(0))
    low = km._layer_inputs.lower(params, b, cfg=cfg, output=ntk.class_prob(0), layers=(0, 1), chunk=2, dtype=None)
    rows = {leaf.shape[0] for leaf in jax.tree_util.tree_leaves(low.out_info)}
    assert rows == {km.padded_rows(5, 2)} == {6}


def test_memory_budget_picks_layers_or_blocks(model):
    cfg, params, batch, _, _ = model
    p_small = ntk.plan_kernels(cfg, params, batch, memory_budget_bytes=40_000)
    p_big = ntk.plan_kernels(cfg, params, batch, memory_budget_bytes=2**30)
    assert p_big.strategy == "full" and len(p_big.blocks) == 1 and p_big.chunk == 5
    assert p_small.strategy == "layers" and len(p_small.blocks) == 2   # MLP-only selection: one per layer
    sel = ntk.by_path(lambda p: p[0] == "head" or p[-1] == "w1")
    p_gen = ntk.plan_kernels(cfg, params, batch, selector=sel, memory_budget_bytes=40_000)
    assert p_gen.strategy == "blocks" and len(p_gen.blocks) > 1


def test_balanced_chunk():
    bc = ntk.kernels_module.balanced_chunk
    assert bc(128, 79) == 64 and bc(128, 200) == 128 and bc(1024, 300) == 256
    assert bc(127, 79) == 64 and bc(5, 2) == 2 and bc(7, 1) == 1
    assert bc(4096, 39) == 32 and bc(96, 20) == 16 and bc(100, 30) == 25   # divisors: no padded rows
    for n in range(1, 200):
        for cap in range(1, 70):
            c = bc(n, cap)
            n_chunks = -(-n // c)
            balanced = -(-n // -(-n // min(cap, n)))
            assert c <= max(cap, 1)
            if n % c:   # padded: the fewest chunks, padding < their number, and no divisor in [3/4 c, c]
                assert n_chunks == -(-n // min(cap, n)) and n_chunks * c - n < n_chunks
                assert not any(n % d == 0 for d in range(-(-3 * balanced // 4), balanced + 1))
            else:
                assert 4 * c >= 3 * balanced


def test_gram_precision_split_is_float32_accurate():
    """bf16 three-piece split vs a float64 Gram of the same float32 G (gradient-like spread of scales)."""
    km = ntk.kernels_module
    rng = np.random.default_rng(0)
    g = (rng.standard_normal((12, 30000)) * np.exp(2 * rng.standard_normal((1, 30000)))).astype(np.float32)
    hi, mid, lo = (np.asarray(x, np.float64) for x in km.split_bf16(jnp.asarray(g)))
    assert np.all(np.abs(hi + mid + lo - g) <= 2.0 ** -24 * np.abs(g))
    g64 = g.astype(np.float64)
    ref = {"ntk": g64 @ g64.T, "sign": g64 @ np.sign(g64).T}
    err = {}
    for gp in ntk.GRAM_PRECISIONS:
        f = jax.jit(lambda a: km._gram_add({k: jnp.zeros((12, 12)) for k in ref}, a, a, tuple(ref), gp))
        out = f([jnp.asarray(g)])
        err[gp] = {k: _rel(out[k], ref[k]) for k in ref}
    for gp in ("highest", "bf16x6", "bf16x9"):
        assert err[gp]["ntk"] < 1e-6 and err[gp]["sign"] < 1e-6, (gp, err)
    assert err["bf16x3"]["sign"] < 1e-6                 # sign uses all three pieces in every scheme
    assert 1e-6 < err["bf16x3"]["ntk"] < 2e-5, err      # hi·hi + hi·mid + mid·hi: ~16 bits


def test_layers_strategy_equals_full_and_bruteforce(model):
    cfg, params, batch, G, full = model
    got, plan = ntk.kernels(cfg, params, batch, kinds=KINDS, strategy="layers", chunk=2,
                            memory_budget_bytes=27_500, return_plan=True)
    assert plan.strategy == "layers" and plan.d_chunks == (4, 2)   # D = 24 and the fused width 10, chunked
    for k in KINDS:
        np.testing.assert_allclose(got[k], full[k], rtol=1e-5, atol=1e-8)
    # bf16x6 Gram, partial selection, cross kernel: still float64-accurate to float32 level
    sel = ntk.by_path(lambda p: p[0] == "layers" and p[-1] in ("w1", "b2") or p[-1] == "w2" and p[1] == 1)
    b1, b2 = _rows(batch, slice(0, N1)), _rows(batch, slice(N1, None))
    got = ntk.kernels(cfg, params, b1, batch2=b2, selector=sel, kinds=KINDS, strategy="layers",
                      gram_precision="bf16x6")
    ref = _ref(G, sel, slice(0, N1), slice(N1, None))
    for k in KINDS:
        assert _rel(got[k], ref[k]) < 2e-5, k


def test_layers_strategy_compiles_once_for_identical_layers():
    cfg = ntkfuse.ModelConfig(family="bert", vocab_size=30, hidden=8, intermediate=12, num_layers=3,
                              num_heads=2, max_positions=16, num_labels=2)
    params = _params(cfg, 5, 4.0)
    batch = _batch(np.random.default_rng(5), [5, 3, 4], 30, 0)
    sel = ntk.mlp_layers([0, 1, 2])
    before = ntk.kernels_module._layer_gram._cache_size()
    got = ntk.kernels(cfg, params, batch, selector=sel, strategy="layers", memory_budget_bytes=2**30)
    assert ntk.kernels_module._layer_gram._cache_size() == before + 1   # one executable for 3 layers
    g = np.asarray(ntk.flatten_grads(ntk.per_example_grads(cfg, params, batch, selector=sel)), np.float64)
    for k, ref in (("ntk", g @ g.T), ("sign", g @ np.sign(g).T)):
        assert _rel(got[k], ref) < 2e-5, k


def test_padding_does_not_change_kernel(model):
    cfg, params, batch, _, full = model
    longer = {k: np.pad(v, ((0, 0), (0, 6)), constant_values=(cfg.pad_token_id if k == "input_ids" else 0))
              for k, v in batch.items()}
    got = ntk.kernels(cfg, params, longer, kinds=KINDS, strategy="full")
    for k in KINDS:
        np.testing.assert_allclose(got[k], full[k], rtol=1e-5, atol=1e-8)


def test_tokens_path_equals_explicit(model):
    cfg, params, batch, G, full = model
    tok, plan = ntk.kernels(cfg, params, batch, kinds=("ntk",), strategy="tokens", return_plan=True)
    assert plan.strategy == "tokens"
    np.testing.assert_allclose(tok["ntk"], full["ntk"], rtol=2e-5, atol=1e-8)
    # partial selection (one dense and one fused leaf set), cross kernel with a different length
    sel = ntk.by_path(lambda p: p[0] == "layers" and p[-1] in ("w1", "b2") or p[-1] == "b1" and p[1] == 1)
    b1, b2 = _rows(batch, slice(0, N1)), _rows(batch, slice(N1, None))
    b2 = {k: v[:, :6] for k, v in b2.items()}   # rows 3, 4 have ≤ 6 real tokens
    got = ntk.kernels(cfg, params, b1, batch2=b2, selector=sel, kinds=("ntk",), strategy="tokens")
    ref = _ref(G, sel, slice(0, N1), slice(N1, None))
    assert _rel(got["ntk"], ref["ntk"]) < 2e-5


def test_tokens_path_chosen_when_cheaper():
    # Very wide layers and two-token sequences: T²(D + d) ≪ D·d, and only the vanilla kernel asked.
    cfg = ntkfuse.ModelConfig(family="bert", vocab_size=30, hidden=32, intermediate=512, num_layers=1,
                              num_heads=2, max_positions=32)
    params = ntkfuse.init_params(cfg, jax.random.PRNGKey(1))
    batch = _batch(np.random.default_rng(8), [2, 2, 1], 30, 0)
    plan = ntk.plan_kernels(cfg, params, batch, kinds=("ntk",))
    assert plan.strategy == "tokens" and plan.flops["tokens"] < plan.flops["full"]
    assert ntk.plan_kernels(cfg, params, batch, kinds=("ntk", "sign")).strategy == "full"
    long = _batch(np.random.default_rng(8), [30, 30, 30], 30, 0)
    assert ntk.plan_kernels(cfg, params, long, kinds=("ntk",)).strategy == "full"


def test_selectors_pick_exact_leaves(model):
    cfg, params, *_ = model
    mlp = lambda l: [("layers", l, "mlp", n) for n in ("w1", "b1", "w2", "b2")]  # noqa: E731
    assert ntk.mlp_layers([1, 0]).paths(params) == mlp(0) + mlp(1)
    assert ntk.mlp_layers(1).paths(params) == mlp(1)
    assert ntk.all_mlps().paths(params) == mlp(0) + mlp(1)
    all_paths = ntk.all_params().paths(params)
    assert len(all_paths) == len(jax.tree_util.tree_leaves(params)) - 1   # all but the fused counts
    assert ("embed", "word") in all_paths and ("layers", 0, "attn", "qkv", "w") in all_paths
    assert ("layers", 1, "mlp", "counts") in ntk.selectors.leaf_paths(params)   # a leaf ...
    assert not any(p[-1] == "counts" for p in all_paths)                        # ... never a parameter
    for s in (ntk.all_params(), ntk.all_mlps(), ntk.mlp_layers(1), ntk.by_path(lambda p: p[-1] == "counts" or
                                                                                    p[0] == "head")):
        sel_, rest_ = s.split(params)
        assert sel_["layers"][1]["mlp"].counts is None and rest_["layers"][1]["mlp"].counts is not None
    assert ntk.by_path(lambda p: p[0] == "head").paths(params) == [
        ("head", "dense", "b"), ("head", "dense", "w"), ("head", "out", "b"), ("head", "out", "w")]
    sel, rest = ntk.mlp_layers(0).split(params)
    assert sum(x.size for x in jax.tree_util.tree_leaves(sel)) == 2 * 16 * 24 + 24 + 16
    assert len(jax.tree_util.tree_leaves(sel)) + len(jax.tree_util.tree_leaves(rest)) == len(all_paths) + 1
    merged = ntk.Selector.merge(sel, rest)
    assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(params)
    assert all(a is b for a, b in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(params)))
    with pytest.raises(ntk.SelectorError, match="out of range"):
        ntk.mlp_layers(7).validate(params)
    with pytest.raises(ntk.SelectorError, match="picks no parameters"):
        ntk.by_path(lambda p: False).validate(params)


def test_fused_counts_one_equals_dense(model):
    cfg, params, batch, _, _ = model
    m = params["layers"][0]["mlp"]
    ones = replace_mlps(params, {0: FusedMLP(m.w1, m.b1, m.w2, m.b2, counts=(1,) * m.w1.shape[0])})
    sel = ntk.mlp_layers([0])
    a = ntk.kernels(cfg, params, batch, kinds=("ntk", "sign"), selector=sel, strategy="full")
    b = ntk.kernels(cfg, ones, batch, kinds=("ntk", "sign"), selector=sel, strategy="full")
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-9)


OTHER_COUNTS = (3, 1, 1, 2, 1, 4, 2, 1, 1, 1)   # the fixture's sizes permuted: same shapes, same total


def test_cluster_sizes_share_one_compiled_program(model):
    """Issue 12: two fusion results of the same shapes but different cluster sizes run through ONE
    compiled program per strategy (the counts are arguments, not constants or treedef metadata),
    and each kernel equals its own float64 reference."""
    km = ntk.kernels_module
    cfg, params, batch, G, full = model
    m = params["layers"][1]["mlp"]
    other = replace_mlps(params, {1: FusedMLP(m.w1, m.b1, m.w2, m.b2, counts=OTHER_COUNTS)})
    assert jax.tree_util.tree_structure(other) == jax.tree_util.tree_structure(params)
    ref = _ref(_bruteforce_G(cfg, other, batch, ntk.class_prob(0)), ntk.all_mlps())
    calls = {"full": (km._kernels_explicit, dict(kinds=KINDS)),
             "tokens": (km._kernels_tokens, dict(kinds=("ntk",))),
             "layers": (km._layer_gram, dict(kinds=KINDS, memory_budget_bytes=2**30))}
    for strategy, (fn, kw) in calls.items():
        first = ntk.kernels(cfg, params, batch, strategy=strategy, **kw)
        size = fn._cache_size()
        got = ntk.kernels(cfg, other, batch, strategy=strategy, **kw)
        assert fn._cache_size() == size, strategy   # no recompile for the new cluster sizes
        for k in kw["kinds"]:
            np.testing.assert_allclose(first[k], full[k], rtol=2e-5, atol=1e-8)
            assert _rel(got[k], ref[k]) < 2e-5, (strategy, k)
            assert _rel(got[k], full[k]) > 1e-3, (strategy, k)   # the counts do change the kernel
    # the output error and a jitted forward: one program for both
    from ntkfuse.ntk import metrics
    assert ntk.output_error(cfg, params, params, [batch], layer=2)["layer"] == 0
    size = metrics._outputs._cache_size()
    err = ntk.output_error(cfg, params, other, [batch], layer=2)
    assert metrics._outputs._cache_size() == size and err["layer"] > 0
    fwd = jax.jit(lambda p: ntkfuse.forward(cfg, p, batch).logits)
    a, b = fwd(params), fwd(other)
    assert fwd._cache_size() == 1 and not np.array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_compute_is_close(model):
    cfg, params, batch, _, full = model
    got = ntk.kernels(cfg, params, batch, kinds=KINDS, strategy="full", compute_dtype="bfloat16")
    for k in KINDS:
        assert got[k].dtype == jnp.float32
        assert _rel(got[k], full[k]) < 0.1, k


def test_lm_target_logprob_matches_bruteforce():
    cfg = ntkfuse.ModelConfig(family="gpt2", vocab_size=40, hidden=16, intermediate=32, num_layers=1, num_heads=2,
                              max_positions=16, activation="gelu_tanh", layer_norm_eps=1e-5, type_vocab_size=0,
                              head="lm")
    params = _params(cfg, 3, 4.0)
    batch = _batch(np.random.default_rng(3), [6, 4, 6], 40, 0)
    tm = batch["attention_mask"].copy()
    tm[:, :2] = 0   # the prompt is not a target
    batch["target_mask"] = tm
    out = ntk.target_logprob("mean")
    ref = _ref(_bruteforce_G(cfg, params, batch, out), ntk.all_mlps())
    got = ntk.kernels(cfg, params, batch, output=out, kinds=KINDS, strategy="full")
    for k in KINDS:
        assert _rel(got[k], ref[k]) < 2e-5, k
    # the convention: token t (t ≥ 1, target_mask[t] = 1) is scored by position t-1
    ex = {k: jnp.asarray(v[0]) for k, v in batch.items()}
    lp = jax.nn.log_softmax(ntkfuse.forward(cfg, params, {"input_ids": ex["input_ids"][None]}).logits[0], -1)
    hand = sum(float(lp[t - 1, ex["input_ids"][t]]) for t in range(2, 6))
    assert abs(float(ntk.target_logprob("sum")(cfg, params, ex)) - hand) < 1e-4
    assert abs(float(out(cfg, params, ex)) - hand / 4) < 1e-5


def test_bad_arguments(model):
    cfg, params, batch, _, _ = model
    with pytest.raises(ntk.NTKConfigError, match="valid: ntk, sign, sign_sym"):
        ntk.kernels(cfg, params, batch, kinds=("ntk", "adam"))
    with pytest.raises(ntk.NTKConfigError, match="valid: auto"):
        ntk.kernels(cfg, params, batch, strategy="fastest")
    with pytest.raises(ntk.NTKConfigError, match="chunk"):
        ntk.kernels(cfg, params, batch, chunk=0)
    with pytest.raises(ntk.NTKConfigError, match="valid: highest, bf16x3"):
        ntk.kernels(cfg, params, batch, gram_precision="fp16")
    with pytest.raises(ntk.NTKConfigError, match="'layers' needs"):
        ntk.kernels(cfg, params, batch, selector=ntk.all_params(), strategy="layers")
    with pytest.raises(ntk.NTKConfigError, match="tokens"):
        ntk.kernels(cfg, params, batch, kinds=("ntk", "sign"), strategy="tokens")
    with pytest.raises(ntk.OutputError, match="out of range"):
        ntk.kernels(cfg, params, batch, output=ntk.class_prob(5))
    with pytest.raises(ntk.OutputError, match="LM head"):
        ntk.kernels(cfg, params, batch, output=ntk.target_logprob())
    with pytest.raises(ntk.OutputError):
        ntk.target_logprob("max")


def test_layers_plan_at_roberta_base_n4096_is_not_degenerate():
    """N = 4096 × 128 at roberta-base shape on an 80 GB GPU's budget (issue 12): the factors of 8
    layers take half the budget; the plan must still batch examples and D-columns (a first version
    fell to 1 example per forward and 3072 one-column D-chunks: 118 s on an H100), and a
    selection whose factors cannot fit is refused before any work."""
    cfg, params = _roberta_base_shapes()
    ids = np.zeros((4096, 128), np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    budget = int(0.8 * 79.6 * 2**30)
    plan = ntk.plan_kernels(cfg, params, batch, selector=ntk.mlp_layers(range(4, 12)), memory_budget_bytes=budget)
    assert plan.strategy == "layers"
    assert plan.chunk >= 16 and max(plan.d_chunks) <= 32, plan
    assert 4096 % plan.chunk == 0, plan    # no padded factor rows (they slowed the Gram by 14 %)
    with pytest.raises(ntk.NTKConfigError, match="resident"):
        ntk.plan_kernels(cfg, params, batch, selector=ntk.mlp_layers(range(12)), memory_budget_bytes=budget // 2,
                         strategy="layers")


def test_bf16_gram_without_autotuning_warns_on_gpu(model, monkeypatch):
    """On an H100 without Triton GEMMs the bf16x6 Gram measured 1.9e-4 off: a GPU call asking for it
    without autotuning is warned; 'highest', or autotune=True, is not."""
    import warnings
    cfg, params, batch, _, _ = model
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")   # the check only reads the backend's name
    kw = dict(kinds=("ntk",), strategy="full", gram_impl="split")
    with pytest.warns(UserWarning, match=r"gram_precision='bf16x6' without autotuning.*1\.9e-4"):
        ntk.kernels(cfg, params, batch, gram_precision="bf16x6", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ntk.kernels(cfg, params, batch, gram_precision="bf16x6", autotune=True, **kw)
        ntk.kernels(cfg, params, batch, gram_precision="highest", **kw)
