"""Surrogates of an encoder-decoder (Switch: encoder layers 0-1, decoder layers 2-3, MoE at 1 and 3 with an
expert capacity that binds): pairs masked by each side's mask, capacity-bound MoE pairs that hold only the
dispatched tokens (where the capacity-free block is exact), fitting such a block, the KL of the decoder's
next-token distributions on target tokens, and layer-wise tuning's per-side masks. A random init, no torch."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkfuse
from ntkfuse.compress import compress_block
from ntkfuse.models import ModelConfig
from ntkfuse.models.blocks import MoEMLP
from ntkfuse.surrogate import (CollectError, FitConfig, SensitivityError, collect_layer_pairs, collect_pairs,
                               evaluate_blocks, fit_blocks, hidden_loss, iter_pairs, layer_sensitivity, output_kl)
from ntkfuse.surrogate.collect import without_capacity

CFG = ModelConfig(family="switch", vocab_size=50, hidden=32, intermediate=64, num_layers=4, num_heads=4,
                  max_positions=1 << 20, activation="relu", type_vocab_size=0, head="lm", encoder_layers=2,
                  sparse_layers=(1, 3), num_experts=4, experts_per_token=1, expert_capacity=2,
                  relative_attention_num_buckets=8, relative_attention_max_distance=16)
RELU = jax.nn.relu


def _batch(seed=0) -> dict:
    """Encoder 3 × 12 (rows padded after 12, 8, 5), decoder 3 × 9 (after 9, 6, 3); target = decoder tokens 1.."""
    rng = np.random.default_rng(seed)

    def side(T, lens):
        mask = (np.arange(T)[None] < np.asarray(lens)[:, None]).astype(np.int32)
        return np.where(mask == 1, rng.integers(3, 50, (3, T)), 0).astype(np.int32), mask

    ids, mask = side(12, [12, 8, 5])
    dids, dmask = side(9, [9, 6, 3])
    dids[:, 0] = 0
    tmask = dmask.copy()
    tmask[:, 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dids, "decoder_attention_mask": dmask,
            "target_mask": tmask}


@pytest.fixture(scope="module")
def model():
    params = ntkfuse.init_params(CFG, jax.random.PRNGKey(0))
    # a sharper router, so tokens spread over experts and the capacity decides
    sharp = {l: dataclasses.replace(params["layers"][l]["mlp"], router=params["layers"][l]["mlp"].router * 50.0)
             for l in CFG.sparse_layers}
    return ntkfuse.replace_mlps(params, sharp), [_batch(0), _batch(1)]


def test_pairs_use_each_sides_mask_and_only_dispatched_tokens(model):
    params, batches = model
    b = batches[0]
    out = ntkfuse.forward(CFG, params, {k: jnp.asarray(v) for k, v in b.items()}, collect=True)
    (pairs,) = list(iter_pairs(CFG, params, [b], range(4)))
    for l in range(4):
        mask = (b["attention_mask"] if l < 2 else b["decoder_attention_mask"]).astype(bool)
        x, y = pairs[l]
        X, Y = np.asarray(out.mlp_inputs[l]), np.asarray(out.mlp_outputs[l])
        if l in CFG.sparse_layers:   # capacity 2 × 4 experts < 12 tokens: some are dropped (output exactly 0)
            blk = params["layers"][l]["mlp"]
            sent = np.asarray(blk.routing(out.mlp_inputs[l])[0].sum(-1) > 0)
            assert not sent[mask].all() and (Y[mask & ~sent] == 0).all()
            mask = mask & sent
            # on the dispatched tokens the capacity-free block is exact; with capacity over flat tokens it is not
            np.testing.assert_allclose(np.asarray(without_capacity(blk)(jnp.asarray(x), RELU)), y, atol=1e-6)
            assert not np.allclose(np.asarray(blk(jnp.asarray(x), RELU)), y, atol=1e-3)
        assert x.shape == (mask.sum(), CFG.hidden)
        np.testing.assert_allclose(x, X[mask], atol=1e-6)
        np.testing.assert_allclose(y, Y[mask], atol=1e-6)
    got = collect_layer_pairs(CFG, params, batches[:1], [0, 2], max_tokens=20)
    assert got[0][0].shape == (20, 32) and got[2][0].shape == (18, 32)   # the decoder has 9 + 6 + 3 tokens
    with pytest.raises(CollectError, match="different token counts.*collect_layer_pairs"):
        collect_pairs(CFG, params, batches, [0, 2])
    assert collect_pairs(CFG, params, batches, [0])[0].shape == (1, 25 + 25, 32)


def test_capacity_bound_moe_fits_exactly_and_keeps_its_capacity(model):
    params, batches = model
    pairs = collect_layer_pairs(CFG, params, batches, [3])
    x, y = pairs[3][0][None], pairs[3][1][None]
    teacher = params["layers"][3]["mlp"]
    # the teacher reproduces its own pairs (a surrogate starting from it has loss 0)
    assert evaluate_blocks([teacher], x, y, "relu")[0] < 1e-12
    init = compress_block(teacher, "prune", 16, jax.random.PRNGKey(0))
    fc = FitConfig(steps=30, batch_size=8, lr=1e-2, holdout=0.0, progress=False)
    res = fit_blocks([init], x, y, fc, "relu")
    (blk,) = res.blocks
    assert isinstance(blk, MoEMLP) and blk.capacity == teacher.capacity == 2 and blk.rule == "switch"
    assert blk.router is not teacher.router and np.array_equal(blk.router, teacher.router)
    assert evaluate_blocks([blk], x, y, "relu")[0] < 0.5 * evaluate_blocks([init], x, y, "relu")[0]


def test_kl_on_target_tokens_zero_for_identity_fusion(model):
    params, batches = model
    D = CFG.intermediate
    assert output_kl(CFG, params, params, batches) == 0.0
    for l in (1, 2):   # an encoder MoE layer, a decoder dense one
        blk = compress_block(params["layers"][l]["mlp"], "fusion", D, jax.random.PRNGKey(0), n_init=1)
        assert abs(output_kl(CFG, params, ntkfuse.replace_mlps(params, {l: blk}), batches)) < 1e-6
    new = ntkfuse.replace_mlps(params, {2: compress_block(params["layers"][2]["mlp"], "prune", 4,
                                                          jax.random.PRNGKey(0))})
    kl = output_kl(CFG, params, new, batches)
    # by hand: position t - 1 predicts target token t
    tot, n = 0.0, 0.0
    for b in batches:
        jb = {k: jnp.asarray(v) for k, v in b.items()}
        lr = jax.nn.log_softmax(ntkfuse.forward(CFG, params, jb).logits, -1)
        ln = jax.nn.log_softmax(ntkfuse.forward(CFG, new, jb).logits, -1)
        per = np.asarray(jnp.sum(jnp.exp(lr) * (lr - ln), -1))[:, :-1]
        m = b["target_mask"][:, 1:]
        tot, n = tot + (per * m).sum(), n + m.sum()
    assert kl > 0 and np.isclose(kl, tot / n, rtol=1e-3)
    rows = layer_sensitivity(CFG, params, batches, [1, 2, 3], [8, 32], method="prune")
    assert len(rows) == 6 and all(r["kl"] >= 0 and r["output_error"] > 0 for r in rows)
    with pytest.raises(SensitivityError, match="target_mask"):
        output_kl(CFG, params, new, [{k: v for k, v in batches[0].items() if k != "target_mask"}])


def test_hidden_loss_masks_each_side(model):
    params, batches = model
    jb = {k: jnp.asarray(v) for k, v in batches[0].items()}
    new = ntkfuse.replace_mlps(params, {l: compress_block(params["layers"][l]["mlp"], "prune", 8,
                                                          jax.random.PRNGKey(l)) for l in (0, 2)})
    assert float(hidden_loss(CFG, params, params, jb, (0, 2))) == 0.0
    a = ntkfuse.forward(CFG, new, jb, collect=True).hidden_states
    r = ntkfuse.forward(CFG, params, jb, collect=True).hidden_states
    want = []
    for l, key in ((0, "attention_mask"), (2, "decoder_attention_mask")):
        i, m = CFG.hidden_state_index(l), batches[0][key]
        want.append((np.sum(np.square(np.asarray(a[i] - r[i])), -1) * m).sum() / m.sum())
    np.testing.assert_allclose(float(hidden_loss(CFG, new, params, jb, (0, 2))), np.mean(want), rtol=1e-5)
