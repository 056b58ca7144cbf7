"""Sliding-window perplexity (`ntkfuse.eval.perplexity`): parity of the total NLL with the HF
PyTorch model on tiny random GPT-2, Llama and Mixtral checkpoints (save_pretrained), the one-window
identity, token weighting against a float64 per-token loop, batching invariance, and the
input errors."""
from __future__ import annotations

import copy
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkfuse
from ntkfuse.data import DataError, read_text
from ntkfuse.eval import PerplexityError, sliding_window_nll, windows
from ntkfuse.models import ModelConfig, forward, init_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REL_TOL = 1e-4      # total NLL, ntkfuse vs HF torch (float32 both)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """LlamaForCausalLM: d=32, D=48, 2 layers, GQA 4/2 heads, vocab 60, 64 positions, norms perturbed."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=60, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    d = tmp_path_factory.mktemp("llama")
    model.save_pretrained(d)
    return model, d


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    """MixtralForCausalLM: d=32, D=48, 2 layers, GQA 4/2 heads, 4 experts top-2, a sharpened router."""
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(vocab_size=60, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                     num_local_experts=4, num_experts_per_tok=2, pad_token_id=0, bos_token_id=1,
                                     eos_token_id=2)
    model = transformers.MixtralForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("gate.weight"):
                p.mul_(20.0)
    d = tmp_path_factory.mktemp("mixtral")
    model.save_pretrained(d)
    return model, d


@pytest.fixture(scope="module")
def models(tiny_gpt2, llama, mixtral):
    """name -> (HF torch model, ntkfuse Loaded); tiny_gpt2 (tests/conftest.py) has 32 positions."""
    return {"gpt2": (tiny_gpt2.model, ntkfuse.load(tiny_gpt2.dir, tokenizer=False)),
            "llama": (llama[0], ntkfuse.load(llama[1], tokenizer=False)),
            "mixtral": (mixtral[0], ntkfuse.load(mixtral[1], tokenizer=False))}


def _ids(n, vocab, seed=0):
    return np.random.default_rng(seed).integers(3, vocab, n).astype(np.int32)


def hf_sliding_nll(model, ids, max_length, stride):
    """Total NLL and scored count with HF's own loss: each window's labels are -100 except the
    tokens after the previous window's end; loss (a mean over the shifted valid labels) × count."""
    n, total, count, scored_to = len(ids), 0.0, 0, 0
    begin = 0
    while True:
        end = min(begin + max_length, n)
        x = torch.from_numpy(np.asarray(ids[begin:end], np.int64))[None]
        labels = torch.full_like(x, -100)
        new = end - scored_to                       # tokens not scored yet: the window's last `new`
        labels[:, x.shape[1] - new:] = x[:, x.shape[1] - new:]
        k = int((labels[:, 1:] != -100).sum())      # the model shifts: position 0 predicts nothing
        with torch.no_grad():
            loss = model(input_ids=x, labels=labels).loss
        total += float(loss) * k
        count += k
        scored_to = end
        if end == n:
            return total, count
        begin += stride


CASES = [(16, 5), (16, 16), (32, 9), (32, 32)]


@pytest.mark.parametrize("max_length,stride", CASES, ids=[f"L{a}-s{b}" for a, b in CASES])
@pytest.mark.parametrize("name", ["gpt2", "llama", "mixtral"])
def test_total_nll_matches_hf_torch(models, name, max_length, stride):
    model, (cfg, params, _, _) = models[name]
    ids = _ids(75, cfg.vocab_size, seed=1)
    r = sliding_window_nll(cfg, params, ids, max_length, stride, batch_size=3)
    ref, count = hf_sliding_nll(model, ids, max_length, stride)
    rel = abs(r.nll - ref) / abs(ref)
    print(f"{name} max_length={max_length} stride={stride}: nll {r.nll:.6f} vs hf {ref:.6f}, rel diff {rel:.2e}")
    assert r.tokens == count
    assert rel < REL_TOL
    assert r.perplexity == pytest.approx(math.exp(ref / count), rel=REL_TOL)
    if stride < max_length:
        assert r.tokens == len(ids) - 1              # every token after the first is scored once
    else:
        assert r.tokens == len(ids) - r.windows      # disjoint windows: each window's first goes unscored


def _logp64(cfg, params, ids):
    """float64 log-softmax of ntkfuse's logits of one unpadded sequence: (len, V)."""
    logits = np.asarray(forward(cfg, params, {"input_ids": np.asarray(ids)[None]}).logits[0], np.float64)
    m = logits.max(-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_one_window_equals_one_forward(models, name):
    _, (cfg, params, _, _) = models[name]
    ids = _ids(23, cfg.vocab_size, seed=2)
    r = sliding_window_nll(cfg, params, ids, max_length=32, stride=32)
    lp = _logp64(cfg, params, ids)
    one = -sum(lp[t - 1, ids[t]] for t in range(1, len(ids)))
    assert (r.windows, r.tokens) == (1, len(ids) - 1)
    assert r.nll == pytest.approx(one, rel=1e-6)


def test_token_weighted_against_per_token_loop(models):
    _, (cfg, params, _, _) = models["llama"]
    ids = _ids(50, cfg.vocab_size, seed=3)
    L, S = 16, 6
    r = sliding_window_nll(cfg, params, ids, L, S, batch_size=4)
    # brute force: token t is scored in the first window holding it, unless it is that window's first token
    done, total, count, per_window = set(), 0.0, 0, []
    b = 0
    while True:
        e = min(b + L, len(ids))
        lp = _logp64(cfg, params, ids[b:e])
        s, c = 0.0, 0
        for t in range(b + 1, e):
            if t not in done:
                s -= lp[t - b - 1, ids[t]]
                c += 1
        done.update(range(b, e))
        total, count = total + s, count + c
        per_window.append((s, c))
        if e == len(ids):
            break
        b += S
    assert len({c for _, c in per_window}) > 1                    # windows score different counts
    assert r.window_tokens.tolist() == [c for _, c in per_window]
    np.testing.assert_allclose(r.window_nll, [s for s, _ in per_window], rtol=1e-5)
    assert (r.tokens, r.nll) == (count, pytest.approx(total, rel=1e-6))
    assert r.perplexity == pytest.approx(math.exp(total / count), rel=1e-6)
    mean_of_windows = np.mean([math.exp(s / c) for s, c in per_window])
    assert abs(mean_of_windows - r.perplexity) > 1e-3 * r.perplexity   # not a mean of window perplexities
    for bs in (1, 5, 100):                                         # batching (and its padding) changes nothing
        assert sliding_window_nll(cfg, params, ids, L, S, batch_size=bs).nll == pytest.approx(r.nll, rel=1e-6)


def test_windows_protocol():
    assert windows(10, 4, 2) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    assert windows(10, 4, 4) == [(0, 4, 1), (4, 8, 5), (8, 10, 9)]
    assert windows(3, 8, 4) == [(0, 3, 1)]
    for n, L, S in ((100, 16, 1), (100, 16, 7), (37, 37, 37), (38, 37, 36)):
        ws = windows(n, L, S)
        assert ws[-1].end == n and all(w.end - w.begin <= L for w in ws)
        covered = sorted(t for w in ws for t in range(w.first, w.end))
        assert covered == sorted(set(covered)) and covered[-1] == n - 1      # each scored once, up to the end
        if S < L:
            assert covered == list(range(1, n))


def test_bad_inputs(models, tmp_path):
    _, (cfg, params, _, _) = models["gpt2"]
    ids = _ids(20, cfg.vocab_size)
    bert = ModelConfig(family="bert", vocab_size=30, hidden=16, intermediate=32, num_layers=1, num_heads=2,
                       max_positions=16)
    with pytest.raises(PerplexityError, match="decoder"):
        sliding_window_nll(bert, init_params(bert, jax.random.PRNGKey(0)), ids % 30, 8, 4)
    with pytest.raises(PerplexityError, match="LM head"):
        sliding_window_nll(cfg.replace(head="none"), params, ids, 8, 4)
    for stride, match in ((0, "stride must be a positive"), (9, "stride 9 exceeds max_length 8"),
                          (-1, "stride must be a positive"), (2.0, "stride must be a positive integer")):
        with pytest.raises(PerplexityError, match=match):
            sliding_window_nll(cfg, params, ids, 8, stride)
    with pytest.raises(PerplexityError, match="exceeds the model's 32 positions"):
        sliding_window_nll(cfg, params, ids, 33, 4)
    with pytest.raises(PerplexityError, match="at least 2"):
        sliding_window_nll(cfg, params, ids[:1], 8, 4)
    with pytest.raises(PerplexityError, match="1-D"):
        sliding_window_nll(cfg, params, ids[None], 8, 4)
    with pytest.raises(PerplexityError, match="outside the vocabulary"):
        sliding_window_nll(cfg, params, np.array([1, 2, cfg.vocab_size]), 8, 4)
    with pytest.raises(PerplexityError, match="batch_size"):
        sliding_window_nll(cfg, params, ids, 8, 4, batch_size=0)
    (tmp_path / "empty.txt").write_text("  \n\n")
    with pytest.raises(DataError, match="empty file"):
        read_text(tmp_path / "empty.txt")
    with pytest.raises(DataError, match="not found"):
        read_text(tmp_path / "missing.txt")
    r = sliding_window_nll(cfg, params, ids, None, None)              # defaults: the model's 32 positions, stride 16
    assert (r.max_length, r.stride) == (32, 16)


# --------------------------------------------------------------------------- encoder-decoder (Switch)

SEQ2SEQ_REL_TOL = 1e-5   # total NLL, ntkfuse float32 vs HF torch float64


@pytest.fixture(scope="module")
def switch(tmp_path_factory):
    """name -> (HF torch model, ntkfuse Loaded) for the Switch parity tests' tiny models (d=32, 2+2 layers,
    one sparse each, 4 experts, vocab 50, norms perturbed): `switch` (capacity 64, never binds) and
    `switch_capacity` (2 tokens per expert per sequence: binds, so padding must not take real tokens' slots)."""
    from tests.models.test_switch import _model
    out = {}
    for name in ("switch", "switch_capacity"):
        model = _model(name)
        d = tmp_path_factory.mktemp(name)
        model.save_pretrained(d)
        out[name] = model, ntkfuse.load(d, tokenizer=False)
    return out


def hf_seq2seq_nll(model, ids, max_length, stride):
    """Float64 total NLL and count with the HF torch model in float64, one unpadded window at a time: the
    encoder reads the window's tokens before its first scored one, the decoder is teacher-forced over the
    scored ones from the decoder start token."""
    model = copy.deepcopy(model).double()
    total, count = 0.0, 0
    for w in windows(len(ids), max_length, stride):
        src = torch.from_numpy(np.asarray(ids[w.begin:w.first], np.int64))[None]
        tgt = torch.from_numpy(np.asarray(ids[w.first:w.end], np.int64))[None]
        dec = torch.cat([torch.full((1, 1), model.config.decoder_start_token_id), tgt[:, :-1]], dim=1)
        with torch.no_grad():
            logits = model(input_ids=src, decoder_input_ids=dec).logits
        assert logits.dtype == torch.float64
        logp = torch.log_softmax(logits, -1).gather(-1, tgt[..., None])[..., 0]
        total -= float(logp.sum())
        count += tgt.shape[1]
    return total, count


SEQ2SEQ_CASES = [(16, 5), (16, 16), (24, 9), (8, 3)]


@pytest.mark.parametrize("max_length,stride", SEQ2SEQ_CASES, ids=[f"L{a}-s{b}" for a, b in SEQ2SEQ_CASES])
@pytest.mark.parametrize("name", ["switch", "switch_capacity"])
def test_encoder_decoder_total_nll_matches_hf_torch(switch, name, max_length, stride):
    model, (cfg, params, _, _) = switch[name]
    assert cfg.is_encoder_decoder
    ids = _ids(61, cfg.vocab_size, seed=2)
    r = sliding_window_nll(cfg, params, ids, max_length, stride, batch_size=3)
    ref, count = hf_seq2seq_nll(model, ids, max_length, stride)
    rel = abs(r.nll - ref) / abs(ref)
    print(f"{name} max_length={max_length} stride={stride}: nll {r.nll:.8f} vs hf float64 {ref:.8f}, rel {rel:.2e}")
    assert r.tokens == count == (len(ids) - 1 if stride < max_length else len(ids) - r.windows)
    assert rel < SEQ2SEQ_REL_TOL
    # batching (and the padding of the last batch and of shorter windows) does not change the sums
    r1 = sliding_window_nll(cfg, params, ids, max_length, stride, batch_size=1)
    np.testing.assert_allclose(r1.window_nll, r.window_nll, rtol=1e-5)


SCORED_CASES = [(61, 16, 16), (61, 16, 5), (61, 24, 9), (40, 8, 1), (40, 2, 1), (40, 2, 2), (45, 9, 9), (20, 32, 8)]


@pytest.mark.parametrize("n,max_length,stride", SCORED_CASES, ids=[f"n{a}-L{b}-s{c}" for a, b, c in SCORED_CASES])
def test_encoder_decoder_inputs_score_every_token_once(switch, n, max_length, stride):
    """The encoder/decoder arrays of every window: the encoder holds exactly the window's context
    x_b .. x_{first-1} (at least x_b), the decoder x_first .. x_{e-1} teacher-forced from the start token,
    and the scored targets over all windows are each token once: 1 .. n-1 for stride < max_length, 1 .. n-1
    but the later windows' first tokens for stride == max_length (the decoder path's tokens either way)."""
    from ntkfuse.eval.perplexity import _seq2seq_arrays
    _, (cfg, _, _, _) = switch["switch"]
    ids = _ids(n, cfg.vocab_size, seed=4)
    wins = windows(n, max_length, stride)
    src, src_mask, dec_in, dec_mask, targets, score = _seq2seq_arrays(cfg, ids, wins, len(wins) + 2)
    positions = []
    for i, w in enumerate(wins):
        assert w.begin < w.first < w.end and w.end - w.begin <= max_length
        assert src[i][src_mask[i] == 1].tolist() == ids[w.begin:w.first].tolist()
        assert src_mask[i].tolist() == sorted(src_mask[i].tolist(), reverse=True)       # right padding
        tgt = ids[w.first:w.end].tolist()
        assert targets[i][score[i]].tolist() == tgt and score[i].tolist() == dec_mask[i].astype(bool).tolist()
        assert dec_in[i][:len(tgt)].tolist() == [cfg.decoder_start_token_id] + tgt[:-1]
        assert score[i].tolist() == sorted(score[i].tolist(), reverse=True)
        positions += range(w.first, w.end)
    assert not score[len(wins):].any()                                               # filler rows score nothing
    assert sorted(positions) == sorted(set(positions))                               # none twice
    unscored = {0} if stride < max_length else {w.begin for w in wins}
    assert set(positions) == set(range(n)) - unscored
    assert wins[-1].end == n


@pytest.mark.parametrize("n,max_length,stride", [(61, 16, 16), (40, 8, 3)], ids=["n61-L16-s16", "n40-L8-s3"])
def test_encoder_decoder_counts(switch, n, max_length, stride):
    """The result's per-window counts are the windows' scored tokens and add up to the text's."""
    _, (cfg, params, _, _) = switch["switch"]
    r = sliding_window_nll(cfg, params, _ids(n, cfg.vocab_size, seed=5), max_length, stride, batch_size=4)
    wins = windows(n, max_length, stride)
    assert r.window_tokens.tolist() == [w.scored for w in wins] and r.windows == len(wins)
    assert wins[-1].end - wins[-1].begin < max_length                                # a partial last window
    assert r.tokens == (n - 1 if stride < max_length else n - len(wins))
    assert np.all(r.window_nll > 0) and np.isfinite(r.perplexity)


def test_encoder_decoder_bfloat16(switch):
    """bfloat16 params run the same jitted path (float32 log-softmax); close to float32."""
    _, (cfg, params, path, _) = switch["switch"]
    ids = _ids(61, cfg.vocab_size, seed=2)
    cfg16, bf, _, _ = ntkfuse.load(path, "bfloat16", tokenizer=False)        # as the CLI's --dtype bfloat16
    assert {a.dtype for a in jax.tree_util.tree_leaves(bf) if jnp.issubdtype(a.dtype, jnp.floating)} == {jnp.dtype(jnp.bfloat16)}
    r32 = sliding_window_nll(cfg, params, ids, 16, 5, batch_size=4)
    r16 = sliding_window_nll(cfg16, bf, ids, 16, 5, batch_size=4)
    assert r16.tokens == r32.tokens and np.isfinite(r16.nll)
    assert abs(r16.mean_nll - r32.mean_nll) / r32.mean_nll < 3e-2     # bf16 rounding (the Switch tests' bound)
