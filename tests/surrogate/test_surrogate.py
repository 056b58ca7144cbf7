"""Surrogate fitting: collection, ridge/SGD recovery, fitting beats its one-shot start,
bitwise resume, layer-wise tuning touches only the compressed MLPs, sensitivity."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkfuse
from ntkfuse.compress import compress_block
from ntkfuse.models import DenseMLP, FusedMLP, LinearMLP, ModelConfig
from ntkfuse.surrogate import (CollectError, FitConfig, FitError, TuneConfig, collect_pairs, evaluate_blocks,
                               fit_blocks, fit_ridge, greedy, init_surrogates, iter_pairs, knapsack,
                               layer_sensitivity, layerwise_tune, low_rank_from_linear, sensitivity_options)

CFG = ModelConfig(family="bert", vocab_size=64, hidden=16, intermediate=64, num_layers=3, num_heads=2,
                  max_positions=32)


@pytest.fixture(scope="module")
def tiny():
    params = ntkfuse.init_params(CFG, jax.random.PRNGKey(0))
    # larger weights than N(0, 0.02) so the MLPs are far from linear
    params = ntkfuse.replace_mlps(params, {l: jax.tree.map(lambda a: a * 40.0, ntkfuse.get_mlp(params, l))
                                           for l in range(CFG.num_layers)})
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(6):
        ids = rng.integers(1, CFG.vocab_size, (8, 12)).astype(np.int32)
        lens = rng.integers(3, 13, 8)
        mask = (np.arange(12)[None] < lens[:, None]).astype(np.int32)
        batches.append({"input_ids": np.where(mask, ids, 0).astype(np.int32), "attention_mask": mask})
    return params, batches


def _fused(block, k, counts):
    """A FusedMLP built by hand (first k neurons, given counts): cheap, no k-means compile."""
    return FusedMLP(block.w1[:k], block.b1[:k], block.w2[:, :k] / np.asarray(counts, np.float32), block.b2,
                    tuple(counts))


def _linear_teacher(key, d=12, D=20):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return DenseMLP(jax.random.normal(k1, (D, d)) / 3, jax.random.normal(k2, (D,)),
                    jax.random.normal(k3, (d, D)) / 3, jax.random.normal(k4, (d,)))


def test_collection_excludes_padding_and_matches_forward(tiny):
    params, batches = tiny
    layers = (0, 2)
    got = list(iter_pairs(CFG, params, batches[:2], layers))
    for pairs, b in zip(got, batches[:2]):
        out = ntkfuse.forward(CFG, params, b, collect=True)
        keep = b["attention_mask"].astype(bool)
        for l in layers:
            x, y = pairs[l]
            assert x.shape == (keep.sum(), CFG.hidden)
            np.testing.assert_allclose(x, np.asarray(out.mlp_inputs[l])[keep], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(y, np.asarray(out.mlp_outputs[l])[keep], rtol=1e-5, atol=1e-5)
    X, Y = collect_pairs(CFG, params, batches, layers, max_tokens=50)
    assert X.shape == Y.shape == (2, 50, CFG.hidden)
    with pytest.raises(CollectError, match="layer 3 out of range: the model has layers 0..2"):
        collect_pairs(CFG, params, batches, (0, 3))


def test_ridge_and_sgd_recover_linear_block():
    teacher = _linear_teacher(jax.random.PRNGKey(1))
    ident = lambda x: x
    W = teacher.w2 @ teacher.w1
    b = teacher.w2 @ teacher.b1 + teacher.b2
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (2, 800, 12)))
    Y = np.stack([np.asarray(teacher(X[i], ident)) for i in range(2)])
    lin = fit_ridge(X[0], Y[0], ridge=0.0)
    np.testing.assert_allclose(lin.w, W, atol=1e-4)
    np.testing.assert_allclose(lin.b, b, atol=1e-4)
    # chunked statistics give the same solution
    lin2 = fit_ridge([(X[0][:300], Y[0][:300]), (X[0][300:], Y[0][300:])], ridge=0.0)
    np.testing.assert_allclose(lin2.w, lin.w, atol=1e-6)
    # full-rank SVD split reproduces W exactly; rank 1 is the best rank-1 approximation
    full = low_rank_from_linear(lin, 12)
    np.testing.assert_allclose(full.u @ full.v, lin.w, atol=1e-5)
    s = np.linalg.svd(np.asarray(lin.w, np.float64), compute_uv=False)
    r1 = low_rank_from_linear(lin, 1)
    assert np.linalg.norm(np.asarray(r1.u @ r1.v) - lin.w) == pytest.approx(np.sqrt((s[1:] ** 2).sum()), rel=1e-4)
    # SGD (AdamW) from zeros, both layers at once
    fc = FitConfig(steps=1000, batch_size=128, lr=3e-2, warmup_steps=10, holdout=0.1, eval_every=100, patience=0,
                   progress=False)
    res = fit_blocks([LinearMLP(jnp.zeros((12, 12)), jnp.zeros(12))] * 2, X, Y, fc, "gelu")
    for blk in res.blocks:
        np.testing.assert_allclose(blk.w, W, atol=5e-3)
        np.testing.assert_allclose(blk.b, b, atol=5e-3)


@pytest.mark.parametrize("method", ["prune", "fusion"])
def test_fit_beats_one_shot_start(tiny, method):
    params, batches = tiny
    layers = (0, 1)
    X, Y = collect_pairs(CFG, params, batches, layers)
    teachers = [ntkfuse.get_mlp(params, l) for l in layers]
    opts = {"n_init": 2, "max_iter": 20} if method == "fusion" else {}
    init = init_surrogates("bottleneck", teachers, jax.random.PRNGKey(3), width=16, method=method,
                           activation=CFG.activation, **opts)
    fc = FitConfig(steps=150, batch_size=64, lr=3e-3, warmup_steps=10, eval_every=25, patience=0, progress=False)
    res = fit_blocks(init, X, Y, fc, CFG.activation)
    before = evaluate_blocks(init, X, Y, CFG.activation)
    after = evaluate_blocks(res.blocks, X, Y, CFG.activation)
    assert np.all(after < 0.7 * before), (before, after)
    held_first = np.asarray(res.history["heldout"][0])
    assert np.all(res.state.best_loss < held_first)
    if method == "fusion":  # counts are never trained and come back unchanged
        assert all(isinstance(b, FusedMLP) and np.array_equal(b.counts, i.counts) for b, i in zip(res.blocks, init))
    if method != "fusion":
        return
    # the fitted model's final outputs move less than the one-shot model's
    from ntkfuse.ntk import output_error
    e0 = output_error(CFG, params, ntkfuse.replace_mlps(params, dict(zip(layers, init))), batches, CFG.num_layers)
    e1 = output_error(CFG, params, ntkfuse.replace_mlps(params, dict(zip(layers, res.blocks))), batches,
                      CFG.num_layers)
    assert e1["layer"] < e0["layer"]


def test_resume_after_interrupt_is_bitwise(tmp_path, tiny):
    params, batches = tiny
    X, Y = collect_pairs(CFG, params, batches, (1, 2))
    teachers = [ntkfuse.get_mlp(params, l) for l in (1, 2)]
    init = [_fused(teachers[0], 8, (1, 2, 3, 4, 1, 1, 2, 2)), _fused(teachers[1], 8, (5, 1, 1, 1, 3, 1, 1, 2))]
    fc = FitConfig(steps=40, batch_size=32, lr=1e-2, warmup_steps=5, eval_every=5, patience=3,
                   checkpoint_every=10, progress=False)
    # the interrupted run uses blocks of up to 3 steps, the others the default (up to the next eval):
    # neither the interruption nor the cut into blocks may change a bit
    ref = fit_blocks(init, X, Y, fc, CFG.activation)
    part = fit_blocks(init, X, Y, dataclasses.replace(fc, block_steps=3), CFG.activation,
                      checkpoint_dir=str(tmp_path / "ck"), stop_at=27)
    assert int(part.state.step) == 27
    res = fit_blocks(init, X, Y, fc, CFG.activation, checkpoint_dir=str(tmp_path / "ck"))
    assert int(res.state.step) == int(ref.state.step)
    for a, b in zip(jax.tree.leaves(ref.blocks), jax.tree.leaves(res.blocks)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(ref.state), jax.tree.leaves(res.state)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert res.history == ref.history
    assert all(np.array_equal(b.counts, i.counts) for b, i in zip(res.blocks, init, strict=True))
    # a different fit in the same directory is refused, not silently resumed
    with pytest.raises(FitError, match="different fit"):
        fit_blocks(init, X, Y, FitConfig(steps=41, progress=False), CFG.activation, checkpoint_dir=str(tmp_path / "ck"))


def test_block_length_does_not_change_fit_and_bf16_fits():
    """No held-out split, no checkpoints: the whole fit is one scan (several epochs inside
    one block); equal bitwise to one dispatch per step. bf16 compute still fits."""
    teacher = _linear_teacher(jax.random.PRNGKey(4), d=8, D=16)
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (2, 96, 8)))
    Y = np.stack([np.asarray(teacher(X[i], jax.nn.gelu)) for i in range(2)])
    init = [DenseMLP(*(0.3 * jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(6), i), s)
                       for i, s in enumerate([(8, 8), (8,), (8, 8), (8,)])))] * 2
    fc = FitConfig(steps=23, batch_size=20, lr=3e-2, warmup_steps=3, holdout=0.0, progress=False)
    one = fit_blocks(init, X, Y, fc, "gelu")
    per_step = fit_blocks(init, X, Y, dataclasses.replace(fc, block_steps=1), "gelu")
    for a, b in zip(jax.tree.leaves(one.state), jax.tree.leaves(per_step.state)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert int(one.state.step) == 23
    bf, f32 = fit_blocks(init, X, Y, dataclasses.replace(fc, compute_dtype="bfloat16"), "gelu"), one
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(bf.blocks))   # master weights stay f32
    before, e_bf, e_32 = (evaluate_blocks(b, X, Y, "gelu") for b in (init, bf.blocks, f32.blocks))
    assert np.all(e_bf < 0.5 * before) and np.all(e_bf < 2 * e_32 + 1e-3), (before, e_bf, e_32)
    assert not np.array_equal(np.asarray(bf.blocks[0].w1), np.asarray(f32.blocks[0].w1))  # bf16 path really ran


def test_bad_fit_input():
    with pytest.raises(FitError, match="valid: mse, cosine"):
        FitConfig(loss="l1")
    with pytest.raises(FitError, match="valid: float32, bfloat16"):
        FitConfig(compute_dtype="float16")
    blk = LinearMLP(jnp.zeros((4, 4)), jnp.zeros(4))
    with pytest.raises(FitError, match="same kind"):
        fit_blocks([blk, DenseMLP(jnp.zeros((2, 4)), None, jnp.zeros((4, 2)), None)], np.zeros((2, 8, 4)),
                   np.zeros((2, 8, 4)))
    with pytest.raises(FitError, match="2 blocks but data for 1"):
        fit_blocks([blk, blk], np.zeros((1, 8, 4)), np.zeros((1, 8, 4)))


def test_layerwise_tuning_changes_only_compressed_mlps(tiny):
    params, batches = tiny
    layers = (0, 2)
    blocks = {0: _fused(ntkfuse.get_mlp(params, 0), 16, (4,) * 16),
              2: compress_block(ntkfuse.get_mlp(params, 2), "prune", 16, jax.random.PRNGKey(6))}
    student = ntkfuse.replace_mlps(params, blocks)
    tuned, losses = layerwise_tune(CFG, student, params, batches[:3], layers, TuneConfig(lr=1e-3))
    assert len(losses) == 3
    for l, layer in enumerate(tuned["layers"]):
        for name in layer:
            a, b = jax.tree.leaves(layer[name]), jax.tree.leaves(student["layers"][l][name])
            same = all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
            assert same == (not (name == "mlp" and l in layers)), (l, name)
    for k in ("embed", "head"):
        assert all(np.array_equal(np.asarray(x), np.asarray(y))
                   for x, y in zip(jax.tree.leaves(tuned[k]), jax.tree.leaves(student[k])))
    np.testing.assert_array_equal(tuned["layers"][0]["mlp"].counts, blocks[0].counts)
    # one epoch at a small lr lowers the tuning objective
    from ntkfuse.surrogate import hidden_loss
    hl = jax.jit(lambda p, b: hidden_loss(CFG, p, params, b, layers))
    f = lambda p: float(np.mean([hl(p, {k: jnp.asarray(v) for k, v in b.items()}) for b in batches[:3]]))
    assert f(tuned) < f(student)


def test_sensitivity_feeds_allocation(tiny):
    params, batches = tiny
    rows = layer_sensitivity(CFG, params, batches[:1], (0,), (8, 32), method="prune")
    assert len(rows) == 2 and all(r["kl"] >= 0 for r in rows)
    by = {(r["layer"], r["width"]): r for r in rows}
    # a wider prune keeps a superset of neurons, so it moves the output less
    assert by[(0, 32)]["output_error"] < by[(0, 8)]["output_error"]
    opts = sensitivity_options(CFG, params, rows)
    full = ntkfuse.models.count_params(ntkfuse.get_mlp(params, 0))
    assert any(o.loss == 0.0 and o.params == full for o in opts[0])
    assert by[(0, 32)]["kl"] < by[(0, 8)]["kl"]
    # a budget between the two widths must pick the narrow one; a full budget the original block
    assert knapsack(opts, by[(0, 32)]["params"] - 1).widths == {0: 8}
    assert knapsack(opts, full).widths == greedy(opts, full).widths == {0: CFG.intermediate}


def test_next_token_kl_over_non_pad_tokens_matches_float64():
    cfg = ModelConfig(family="gpt2", vocab_size=50, hidden=16, intermediate=64, num_layers=2, num_heads=2,
                      max_positions=16, activation="gelu_tanh", head="lm", type_vocab_size=0)
    p = ntkfuse.init_params(cfg, jax.random.PRNGKey(0))
    new = ntkfuse.replace_mlps(p, {1: compress_block(ntkfuse.get_mlp(p, 1), "prune", 8, jax.random.PRNGKey(0))})
    ids = np.random.default_rng(0).integers(0, 50, (4, 10)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[:, 7:] = 0
    mask[0, 4:] = 0
    b = {"input_ids": ids, "attention_mask": mask}
    from ntkfuse.surrogate import output_kl
    la, lc = (np.asarray(ntkfuse.forward(cfg, q, b).logits, np.float64) for q in (p, new))
    la, lc = (x - np.log(np.exp(x).sum(-1, keepdims=True)) for x in (la, lc))
    kl = (np.exp(la) * (la - lc)).sum(-1)
    assert output_kl(cfg, p, new, [b]) == pytest.approx((kl * mask).sum() / mask.sum(), rel=1e-2)
    assert output_kl(cfg, p, p, [b]) == 0.0


def test_fit_grouped_mixed_widths_equals_separate_fits():
    from ntkfuse.surrogate import fit_grouped
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3, 200, 6)).astype(np.float32)
    Y = np.tanh(X @ rng.normal(size=(6, 6)).astype(np.float32))
    mk = lambda k, s: DenseMLP(jnp.asarray(rng.normal(size=(k, 6)) * s, jnp.float32), jnp.zeros(k),
                               jnp.asarray(rng.normal(size=(6, k)) * s, jnp.float32), jnp.zeros(6))
    blocks = [mk(4, 0.3), mk(8, 0.3), mk(4, 0.5)]
    fc = FitConfig(steps=20, batch_size=32, eval_every=10, progress=False)
    got, res = fit_grouped(blocks, X, Y, fc)
    assert sorted(res) == [(0, 2), (1,)]
    solo = fit_blocks([blocks[1]], X[1:2], Y[1:2], fc).blocks[0]
    # stacking over layers is exactly independent per-layer fitting
    for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(solo)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    solo0 = fit_blocks([blocks[0]], X[:1], Y[:1], fc).blocks[0]   # fitted alone vs stacked with layer 2
    for a, b in zip(jax.tree.leaves(got[0]), jax.tree.leaves(solo0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
