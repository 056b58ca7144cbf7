"""Greedy KV-cache decoding: parity with the full forward and with HF `generate`, EOS and
length limits, one compilation per shape."""
from __future__ import annotations

import jax
import numpy as np
import pytest

import ntkfuse
from ntkfuse.compress import compress
from ntkfuse.finetune import decode as dec
from ntkfuse.finetune.decode import DecodeError, greedy_decode
from ntkfuse.models import FusedMLP, ModelConfig, init_params, jit_forward
from tests.conftest import random_batch

CFG = ModelConfig(family="gpt2", vocab_size=50, hidden=32, intermediate=64, num_layers=2, num_heads=4,
                  max_positions=40, activation="gelu_tanh", layer_norm_eps=1e-5, type_vocab_size=0, head="lm")
LENGTHS = (5, 2, 8)


@pytest.fixture(scope="module")
def models() -> dict:
    """A tiny random GPT-2 (init_params plus noise, so greedy paths vary from token to token)
    and the same model with layer 1's MLP fused to width 16 (layer 0 stays dense)."""
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda x: x + 0.3 * rng.standard_normal(x.shape).astype(x.dtype),
                                    init_params(CFG, jax.random.PRNGKey(0)))
    fused = compress(CFG, params, "fusion", [1], 16, jax.random.PRNGKey(1), n_init=2, max_iter=20)
    assert isinstance(fused["layers"][1]["mlp"], FusedMLP)
    return {"dense": params, "fusion": fused}


def _left_pad(batch: dict, pad: int) -> dict:
    """The same prompts moved to the right end of each row."""
    ids, mask = np.full_like(batch["input_ids"], pad), np.zeros_like(batch["attention_mask"])
    t = ids.shape[1]
    for i, n in enumerate(batch["attention_mask"].sum(-1)):
        ids[i, t - n:], mask[i, t - n:] = batch["input_ids"][i, :n], 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("kind", ["dense", "fusion"])
def test_cached_logits_equal_full_forward(models, kind, padding):
    params = models[kind]
    batch = random_batch(np.random.default_rng(0), LENGTHS, CFG.vocab_size, pad_id=0)
    n = 6
    gen = greedy_decode(CFG, params, batch if padding == "right" else _left_pad(batch, 0), n, return_logits=True)
    assert gen.tokens.shape == (3, n) and np.all(np.asarray(gen.lengths) == n)
    # Reference: every row's prompt + its generated tokens, one full (uncached) forward.
    rows = [list(batch["input_ids"][i, :L]) + list(np.asarray(gen.tokens[i, :n - 1])) for i, L in enumerate(LENGTHS)]
    full = random_batch(np.random.default_rng(1), [len(r) for r in rows], CFG.vocab_size, pad_id=0)
    for i, r in enumerate(rows):
        full["input_ids"][i, :len(r)] = r
    logits = np.asarray(jit_forward(CFG, params, full).logits)
    for i, L in enumerate(LENGTHS):
        ref = logits[i, L - 1:L - 1 + n]
        # rtol 1e-5, and the same relative bound on the row's scale for logits near zero
        np.testing.assert_allclose(np.asarray(gen.logits[i]), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
        np.testing.assert_array_equal(np.asarray(gen.tokens[i]), ref.argmax(-1))


def _hf_generate(model, ids, mask, n, eos, pad):
    import torch
    out = model.generate(torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), max_new_tokens=n,
                         do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=pad)
    return out[:, ids.shape[1]:].numpy()


def _eos_candidate(tokens: np.ndarray) -> tuple[int, int, int]:
    """(row, k, token): the token first emitted at step k of that row, preferring k >= 1 (a
    stop inside the loop) over k = 0 (a stop at the prefill)."""
    for k in (*range(1, tokens.shape[1]), 0):
        for i in range(tokens.shape[0]):
            if tokens[i, k] not in tokens[i, :k]:
                return i, k, int(tokens[i, k])
    raise AssertionError("unreachable: step 0 always qualifies")


@pytest.fixture(scope="module")
def gpt2_pair(tiny_gpt2):
    loaded = ntkfuse.load(tiny_gpt2.dir, tokenizer=False)
    batch = random_batch(np.random.default_rng(2), LENGTHS, loaded.cfg.vocab_size, pad_id=0)
    return loaded, tiny_gpt2.model, batch


@pytest.mark.parametrize("stop", ["no_eos", "eos"])
def test_matches_hf_generate(gpt2_pair, stop):
    loaded, model, batch = gpt2_pair
    n = 10
    ours = np.asarray(greedy_decode(loaded.cfg, loaded.params, batch, n, eos_id=None).tokens)
    eos = None
    if stop == "eos":  # a token some row emits first at step k, so that row stops there
        row, k, eos = _eos_candidate(ours)
        ours = greedy_decode(loaded.cfg, loaded.params, batch, n, eos_id=eos, pad_id=0)
        assert int(ours.lengths[row]) == k + 1
        ours = np.asarray(ours.tokens)
    # HF reference with an EOS id the model never emits when we mean "no EOS".
    hf_eos = eos if eos is not None else int(np.setdiff1d(np.arange(loaded.cfg.vocab_size), ours)[0])
    for i, L in enumerate(LENGTHS):  # each row alone, unpadded
        ids, mask = batch["input_ids"][i:i + 1, :L], batch["attention_mask"][i:i + 1, :L]
        ref = _hf_generate(model, ids, mask, n, hf_eos, 0)[0]
        np.testing.assert_array_equal(ours[i, :len(ref)], ref)
        assert np.all(ours[i, len(ref):] == 0)
    # HF's batched generation needs left padding; ours (right-padded) must equal it too.
    left = _left_pad(batch, 0)
    ref = _hf_generate(model, left["input_ids"], left["attention_mask"], n, hf_eos, 0)
    np.testing.assert_array_equal(ours[:, :ref.shape[1]], ref)


def test_eos_stops_rows_and_the_loop(models):
    params = models["dense"]
    batch = random_batch(np.random.default_rng(3), LENGTHS, CFG.vocab_size, pad_id=0)
    n = 6
    free = greedy_decode(CFG, params, batch, n, return_logits=True)
    free_tok = np.asarray(free.tokens)
    assert free_tok.shape == (3, n) and np.all(np.asarray(free.lengths) == n)
    row, k, eos = _eos_candidate(free_tok)
    assert k >= 1, "the test model should stop a row inside the loop"
    gen = greedy_decode(CFG, params, batch, n, eos_id=eos, pad_id=7, return_logits=True)
    tok, lengths = np.asarray(gen.tokens), np.asarray(gen.lengths)
    for i in range(3):
        hit = np.flatnonzero(free_tok[i] == eos)
        stop = hit[0] + 1 if hit.size else n
        assert lengths[i] == stop
        np.testing.assert_array_equal(tok[i, :stop], free_tok[i, :stop])
        assert np.all(tok[i, stop:] == 7)
    # One row alone: the loop exits at its EOS, so later logit slots were never written.
    one = greedy_decode(CFG, params, {k_: v[row:row + 1] for k_, v in batch.items()}, n, eos_id=eos,
                        return_logits=True)
    logits = np.asarray(one.logits[0])
    assert int(one.lengths[0]) == k + 1
    assert np.all(np.abs(logits[:k + 1]).max(-1) > 0) and np.all(logits[k + 1:] == 0)


def test_compiles_once_per_shape(models, monkeypatch):
    params = models["fusion"]
    traces = []
    real = dec.apply_mlp
    monkeypatch.setattr(dec, "apply_mlp", lambda *a: (traces.append(1), real(*a))[1])
    rng = np.random.default_rng(4)
    shape_lengths = [(7, 3, 1, 6), (2, 7, 5, 5)]  # same (batch 4, length 7), different prompts
    greedy_decode(CFG, params, random_batch(rng, shape_lengths[0], CFG.vocab_size, 0), 5)
    first = len(traces)
    assert first > 0
    greedy_decode(CFG, params, random_batch(rng, shape_lengths[1], CFG.vocab_size, 0), 5, eos_id=3, pad_id=1)
    assert len(traces) == first
    greedy_decode(CFG, params, random_batch(rng, shape_lengths[1], CFG.vocab_size, 0), 6)
    assert len(traces) > first  # a new max_new_tokens is a new shape


@pytest.mark.parametrize("change, match", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=40), "positions"),
    (dict(eos_id=50), "eos_id"),
    (dict(mask=[[1, 0, 1]]), "contiguous"),
    (dict(mask=[[0, 0, 0]]), "no tokens"),
    (dict(cfg=CFG.replace(family="bert", head="classifier", type_vocab_size=2)), "decoder language model"),
])
def test_bad_input(models, change, match):
    batch = {"input_ids": np.array([[1, 2, 3]]), "attention_mask": np.array(change.pop("mask", [[1, 1, 0]]))}
    cfg = change.pop("cfg", CFG)
    with pytest.raises(DecodeError, match=match):
        greedy_decode(cfg, models["dense"], batch, **{"max_new_tokens": 4, **change})


def test_refuses_a_decoder_family_without_a_cached_step():
    """Llama is a decoder family, but the KV-cache step implements GPT-2's layer only."""
    import ntkfuse.models.families as F
    assert F.get_family("gpt2").cached_decoding and not F.get_family("llama").cached_decoding
    cfg = CFG.replace(family="llama", activation="silu")
    batch = {"input_ids": np.ones((1, 4), np.int32), "attention_mask": np.ones((1, 4), np.int32)}
    with pytest.raises(DecodeError, match="cached_decoding"):
        greedy_decode(cfg, None, batch, 3)
