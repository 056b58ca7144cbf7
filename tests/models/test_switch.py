"""The Switch Transformers family (T5-style encoder-decoder with top-1 routed MoE layers, docs/moe.md):
parity with HF PyTorch `SwitchTransformersForConditionalGeneration` on tiny random checkpoints written
with save_pretrained (float32, bfloat16), the three rules HF applies (relative-position buckets,
which layers are sparse, expert capacity) each checked against HF and shown to matter, expert-wise
compression (identity at width D, routing unchanged), the NTK against per-example jax.grad, output
error on the decoder's tokens and the ntk_compare CLI.

Tolerance (float32): ‖ours − hf‖ / ‖hf‖ < 1e-4 over non-padding positions, for the logits and every
encoder and decoder hidden state (measured ≤ 3.1e-7).
"""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkfuse
from ntkfuse.models import ModelConfig, UnsupportedModelError
from ntkfuse.models.blocks import DenseMLP, FusedMLP, MoEMLP
from ntkfuse.models.families import switch
from tests.models.hf_decoders import compare_methods, save_variants
from tests.models.test_parity import rel_err

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
BF16_TOL = 3e-2    # measured 7.6e-3 (bf16 rounding; HF's attention softmax runs in bf16, ours in float32)
BASE = dict(vocab_size=50, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
            num_experts=4, num_sparse_encoder_layers=1, num_sparse_decoder_layers=1, expert_capacity=64,
            relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0)
VARIANTS = {
    "switch": {},
    # 2 tokens per expert per sequence: capacity binds on the 12- and 9-token rows
    "switch_capacity": dict(expert_capacity=2),
    # encoder step 3 (layer 1 sparse of 3), decoder step 1 (every layer sparse), untied head (no rescaling)
    "switch_untied": dict(num_layers=3, num_sparse_decoder_layers=2, tie_word_embeddings=False),
}


def _model(name, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.SwitchTransformersConfig(**{**BASE, **VARIANTS[name]})
    model = transformers.SwitchTransformersForConditionalGeneration(cfg).eval()
    with torch.no_grad():   # norms away from ones (a mapping error shows); a sharper router in the capacity case
        for n, p in model.named_parameters():
            if n.endswith("layer_norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
            if n.endswith("router.classifier.weight") and name == "switch_capacity":
                p.mul_(3.0)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return save_variants(tmp_path_factory, VARIANTS, _model)


def seq2seq_batch() -> dict:
    """Encoder 3 × 12 (rows 1, 2 padded after 8 and 5), decoder 3 × 9 (padded after 6 and 3); pad id 0."""
    rng = np.random.default_rng(0)

    def side(T, lens):
        ids = rng.integers(3, 50, (3, T))
        mask = (np.arange(T)[None] < np.asarray(lens)[:, None]).astype(np.int32)
        return np.where(mask == 1, ids, 0).astype(np.int32), mask

    ids, mask = side(12, [12, 8, 5])
    dids, dmask = side(9, [9, 6, 3])
    dids[:, 0] = 0   # the decoder start token
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dids, "decoder_attention_mask": dmask}


def _jbatch(batch=None):
    return {k: jnp.asarray(v) for k, v in (batch or seq2seq_batch()).items()}


def hf_outputs(model, batch) -> tuple:
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()}, output_hidden_states=True)
    f = lambda t: t.float().numpy()  # noqa: E731
    return f(out.logits), [f(h) for h in out.encoder_hidden_states], [f(h) for h in out.decoder_hidden_states]


def _errors(cfg, params, model, batch=None) -> list:
    """Relative errors of [logits, encoder hidden states..., decoder hidden states...]."""
    batch = batch or seq2seq_batch()
    out = ntkfuse.jit_forward(cfg, params, _jbatch(batch), True)
    logits, enc, dec = hf_outputs(model, batch)
    assert len(out.hidden_states) == len(enc) + len(dec) == cfg.num_hidden_states()
    m, dm = batch["attention_mask"], batch["decoder_attention_mask"]
    ours = [np.asarray(h, np.float32) for h in out.hidden_states]
    return [rel_err(np.asarray(out.logits, np.float32), logits, dm)] + \
        [rel_err(a, b, m) for a, b in zip(ours[:len(enc)], enc)] + \
        [rel_err(a, b, dm) for a, b in zip(ours[len(enc):], dec)]


def _load(checkpoints, name, **kw):
    return ntkfuse.load(checkpoints[name][1], tokenizer=False, **kw)


# --------------------------------------------------------------------------- loading and parity


def test_saved_names_and_config(checkpoints):
    from safetensors import safe_open
    with safe_open(str(checkpoints["switch"][1] / "model.safetensors"), "np") as f:
        keys = set(f.keys())
    assert "encoder.block.1.layer.1.mlp.router.classifier.weight" in keys
    assert "decoder.block.1.layer.2.mlp.experts.expert_3.wo.weight" in keys and "lm_head.weight" not in keys
    cfg = _load(checkpoints, "switch").cfg
    assert (cfg.family, cfg.encoder_layers, cfg.num_layers, cfg.sparse_layers) == ("switch", 2, 4, (1, 3))
    assert cfg.activation == "relu" and cfg.expert_capacity == 64 and cfg.tie_word_embeddings
    u = _load(checkpoints, "switch_untied").cfg
    assert (u.encoder_layers, u.num_layers, u.sparse_layers, u.tie_word_embeddings) == (3, 5, (1, 3, 4), False)
    params = _load(checkpoints, "switch_untied").params
    for i, lp in enumerate(params["layers"]):
        blk = lp["mlp"]
        assert isinstance(blk, MoEMLP) == (i in u.sparse_layers)
        assert ("cross_attn" in lp) == (i >= u.encoder_layers)
        for b in (blk.experts if isinstance(blk, MoEMLP) else (blk,)):   # bias-free ReLU MLPs (T5's wi, wo)
            assert isinstance(b, DenseMLP) and b.b1 is None and b.b2 is None
        if isinstance(blk, MoEMLP):
            assert (blk.top_k, blk.rule, blk.capacity) == (1, "switch", 64)


@pytest.mark.parametrize("scan", [False, True], ids=["list", "scan"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_parity_with_hf_float32(checkpoints, name, scan):
    model, _ = checkpoints[name]
    loaded = _load(checkpoints, name)
    errs = _errors(loaded.cfg.replace(scan_layers=scan), loaded.params, model)
    assert max(errs) < TOL, errs


def test_routing_varies_and_capacity_binds(checkpoints):
    """The parity cases exercise routing: tokens go to several experts, and with capacity 2 some
    non-padding tokens are dropped (all-zero routing weights) while the rest are routed."""
    batch = seq2seq_batch()
    for name, dropped in (("switch", False), ("switch_capacity", True)):
        loaded = _load(checkpoints, name)
        out = ntkfuse.jit_forward(loaded.cfg, loaded.params, _jbatch(batch), True)
        for l in loaded.cfg.sparse_layers:
            w, idx = loaded.params["layers"][l]["mlp"].routing(out.mlp_inputs[l])
            m = batch["attention_mask" if l < loaded.cfg.encoder_layers else "decoder_attention_mask"].astype(bool)
            assert len(np.unique(np.asarray(idx)[m])) >= 2, (name, l)
            kept = np.asarray(w).sum(-1) > 0
            assert (~kept[m]).any() == dropped, (name, l)
            assert (np.asarray(w) > 0).sum(-1).max() == 1


def test_parity_with_hf_bfloat16(checkpoints):
    _, d = checkpoints["switch"]
    loaded = ntkfuse.load(d, dtype="bfloat16", tokenizer=False)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(loaded.params))
    hf16 = transformers.SwitchTransformersForConditionalGeneration.from_pretrained(d, dtype=torch.bfloat16).eval()
    errs = _errors(loaded.cfg, loaded.params, hf16)
    assert max(errs) < BF16_TOL, errs


def test_sharded_checkpoint_loads_the_same(checkpoints, tmp_path):
    model, d = checkpoints["switch_untied"]
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    a, b = _load(checkpoints, "switch_untied").params, ntkfuse.load(tmp_path, tokenizer=False).params
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --------------------------------------------------------------------------- HF's three rules


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("buckets,distance", [(32, 128), (8, 16), (16, 20), (6, 7)])
def test_relative_buckets_match_hf(bidirectional, buckets, distance):
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersAttention
    T = 300
    rel = torch.arange(T)[None, :] - torch.arange(T)[:, None]
    ref = SwitchTransformersAttention._relative_position_bucket(rel, bidirectional=bidirectional,
                                                                num_buckets=buckets, max_distance=distance)
    got = switch.relative_buckets(T, T, bidirectional, buckets, distance)
    np.testing.assert_array_equal(got, ref.numpy())


@pytest.mark.parametrize("layers,sparse", [(1, 0), (1, 1), (2, 1), (3, 1), (4, 2), (4, 4), (6, 4), (5, 0), (2, 3)])
def test_sparse_layer_rule_matches_hf(layers, sparse):
    cfg = transformers.SwitchTransformersConfig(vocab_size=8, d_model=4, d_kv=2, d_ff=4, num_heads=2, num_experts=2,
                                                num_layers=layers, num_sparse_encoder_layers=sparse,
                                                num_decoder_layers=1, num_sparse_decoder_layers=1)
    model = transformers.SwitchTransformersForConditionalGeneration(cfg)
    want = tuple(i for i, b in enumerate(model.encoder.block) if b.is_sparse)
    assert switch.sparse_layer_indices(layers, sparse) == want
    assert ModelConfig.from_hf_config(cfg).sparse_layers[:len(want)] == want


def test_moe_block_matches_hf_sparse_mlp_where_capacity_binds(checkpoints):
    model, _ = checkpoints["switch_capacity"]
    hf = model.encoder.block[1].layer[1].mlp
    block = _load(checkpoints, "switch_capacity").params["layers"][1]["mlp"]
    x = np.random.default_rng(1).normal(size=(2, 9, 32)).astype(np.float32)
    with torch.no_grad():
        ref = hf(torch.from_numpy(x)).numpy()
        dispatch, _, _ = hf.router(torch.from_numpy(x))
    w, _ = block.routing(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(w) > 0, dispatch.numpy().astype(bool))
    assert (dispatch.numpy().sum(-1) == 0).any()          # some tokens over capacity
    assert rel_err(np.asarray(jax.jit(lambda b, x: b(x, jax.nn.relu))(block, jnp.asarray(x))), ref) < 1e-6


def _with_mlps(params, fn):
    return {**params, "layers": [dict(lp, mlp=fn(lp["mlp"])) if isinstance(lp["mlp"], MoEMLP) else lp
                                 for lp in params["layers"]]}


def test_parity_would_catch_a_wrong_rule(checkpoints, monkeypatch):
    """Dropping the capacity, or bucketing the encoder causally, breaks parity."""
    model, _ = checkpoints["switch_capacity"]
    loaded = _load(checkpoints, "switch_capacity")
    no_cap = _with_mlps(loaded.params, lambda b: dataclasses.replace(b, capacity=None))
    assert _errors(loaded.cfg, no_cap, model)[0] > 100 * TOL
    top1_renorm = _with_mlps(loaded.params, lambda b: MoEMLP(b.router, b.experts, 1))   # Mixtral's rule
    assert _errors(loaded.cfg, top1_renorm, model)[0] > 100 * TOL
    real = switch.relative_buckets
    monkeypatch.setattr(switch, "relative_buckets", lambda q, k, bi, n, m: real(q, k, False, n, m))
    cfg = loaded.cfg.replace(name="causal encoder buckets")   # a new jit cache entry: traced with the patch
    assert _errors(cfg, loaded.params, model)[0] > 100 * TOL


# --------------------------------------------------------------------------- config, batches, errors


def test_config_round_trip_init_and_errors(checkpoints, tmp_path):
    loaded = _load(checkpoints, "switch_untied")
    cfg = loaded.cfg
    back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and hash(back) == hash(cfg)
    p = ntkfuse.init_params(cfg, jax.random.PRNGKey(0))
    assert jax.tree_util.tree_structure(p) == jax.tree_util.tree_structure(loaded.params)
    d = json.loads((checkpoints["switch"][1] / "config.json").read_text())
    for change, match in ((dict(router_bias=True), "router_bias"), (dict(d_kv=4), "d_kv"),
                          (dict(dense_act_fn="gated-gelu"), "gated"), (dict(router_dtype="bfloat16"), "router_dtype")):
        with pytest.raises(UnsupportedModelError, match=match):
            ModelConfig.from_hf_config({**d, **change})
    b = seq2seq_batch()
    with pytest.raises(ValueError, match="decoder_input_ids"):
        ntkfuse.check_batch(cfg, {"input_ids": b["input_ids"]})
    with pytest.raises(ValueError, match="decoder_attention_mask has shape"):
        ntkfuse.check_batch(cfg, {**b, "decoder_attention_mask": b["attention_mask"]})
    from ntkfuse.eval.perplexity import PerplexityError, check_settings
    assert check_settings(cfg, 16, 4) == (16, 4)    # perplexity is conditioned through the encoder (eval tests)
    with pytest.raises(PerplexityError, match="LM head"):
        check_settings(cfg.replace(head="none"))


# --------------------------------------------------------------------------- compression


def test_fusion_one_neuron_per_cluster_reproduces_the_model(checkpoints):
    from ntkfuse.compress import compress
    loaded = _load(checkpoints, "switch_capacity")
    cfg, params = loaded.cfg, loaded.params
    D, layers = cfg.intermediate, list(range(cfg.num_layers))
    new = compress(cfg, params, "fusion", layers, D, jax.random.PRNGKey(0), n_init=1)
    batch = _jbatch()
    a = ntkfuse.jit_forward(cfg, params, batch, True)
    b = ntkfuse.jit_forward(cfg, new, batch, True)
    np.testing.assert_allclose(np.asarray(b.logits), np.asarray(a.logits), rtol=1e-5, atol=1e-5)
    for l in layers:
        old, blk = params["layers"][l]["mlp"], new["layers"][l]["mlp"]
        x = a.mlp_inputs[l]
        if isinstance(old, MoEMLP):
            assert blk.router is old.router and (blk.rule, blk.capacity) == (old.rule, old.capacity)
            pairs = list(zip(blk.experts, old.experts)) + [(blk, old)]
        else:
            pairs = [(blk, old)]
        for u, v in pairs:
            assert all(isinstance(e, FusedMLP) and np.array_equal(e.counts, np.ones(D)) for e in getattr(u, "experts", (u,)))
            np.testing.assert_allclose(np.asarray(u(x, jax.nn.relu)), np.asarray(v(x, jax.nn.relu)),
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["fusion", "cluster", "prune", "sketch", "svd", "magnitude", "mmd"])
def test_every_method_compresses_experts_and_keeps_routing(checkpoints, method):
    from ntkfuse.compress import compress, param_count
    loaded = _load(checkpoints, "switch_capacity")
    cfg, params = loaded.cfg, loaded.params
    opts = {"n_init": 1} if method in ("fusion", "cluster") else ({"steps": 5} if method == "mmd" else {})
    new = compress(cfg, params, method, [0, 1, 3], 16, jax.random.PRNGKey(1), **opts)
    out = ntkfuse.jit_forward(cfg, params, _jbatch(), True)
    assert new["layers"][2]["mlp"] is params["layers"][2]["mlp"]
    for l in (1, 3):
        old_b, new_b = params["layers"][l]["mlp"], new["layers"][l]["mlp"]
        assert isinstance(new_b, MoEMLP) and new_b.router is old_b.router
        for u, v in zip(new_b.routing(out.mlp_inputs[l]), old_b.routing(out.mlp_inputs[l])):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    if method not in ("magnitude", "svd"):   # svd keeps the width (low-rank factors), magnitude zeros weights
        assert new["layers"][0]["mlp"].width == 16 and new["layers"][3]["mlp"].expert_widths == (16,) * 4
    if method != "magnitude":
        assert param_count(new, [0, 1, 3]) < param_count(params, [0, 1, 3])
    logits = ntkfuse.jit_forward(cfg, new, _jbatch()).logits
    assert np.all(np.isfinite(np.asarray(logits)))


def test_compressed_switch_saves_and_restores_bit_identically(checkpoints, tmp_path):
    from ntkfuse.compress import compress, restore_compressed, save_compressed
    loaded = _load(checkpoints, "switch_capacity")
    new = compress(loaded.cfg, loaded.params, "fusion", [1, 2], 8, jax.random.PRNGKey(0), n_init=1)
    save_compressed(tmp_path / "c", loaded.cfg, new, {"method": "fusion"})
    cfg, params = restore_compressed(tmp_path / "c")[:2]
    assert cfg == loaded.cfg and params["layers"][1]["mlp"].capacity == 2
    batch = _jbatch()
    np.testing.assert_array_equal(np.asarray(ntkfuse.jit_forward(cfg, params, batch).logits),
                                  np.asarray(ntkfuse.jit_forward(loaded.cfg, new, batch).logits))


# --------------------------------------------------------------------------- NTK and output error


def _target_batch():
    b = seq2seq_batch()
    tm = b["decoder_attention_mask"].copy()
    tm[:, 0] = 0
    return {**b, "target_mask": tm}


def test_ntk_matches_per_example_grad(checkpoints):
    """kernels (auto and full) of the decoder's target log-prob w.r.t. a dense encoder MLP and a sparse
    decoder MLP equal Gram matrices of per-example jax.grad."""
    from ntkfuse.ntk import Selector, kernels, mlp_layers, target_logprob
    from ntkfuse.ntk.kernels import NTKConfigError
    loaded = _load(checkpoints, "switch_capacity")
    cfg, params = loaded.cfg, loaded.params
    batch, out, sel = _target_batch(), target_logprob(), mlp_layers([0, 3])
    s, rest = sel.split(params)
    rows = []
    for i in range(3):
        ex = {k: jnp.asarray(v[i]) for k, v in batch.items()}
        g = jax.grad(lambda q: out(cfg, Selector.merge(q, rest), ex))(s)
        rows.append(np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree_util.tree_leaves(g)]))
    G = np.stack(rows)
    ref = {"ntk": G @ G.T, "sign": G @ np.sign(G).T}
    for strategy in ("auto", "full"):
        got = kernels(cfg, params, batch, output=out, selector=sel, strategy=strategy)
        for k in ref:
            assert rel_err(np.asarray(got[k]), ref[k]) < 1e-5, (strategy, k)
    with pytest.raises(NTKConfigError, match="encoder-decoder"):
        kernels(cfg, params, batch, output=out, selector=mlp_layers([0]), kinds=("ntk",), strategy="tokens")


def test_target_logprob_is_hf_label_log_likelihood(checkpoints):
    """target_logprob on the decoder sequence = −(HF's summed cross-entropy with labels = the targets)."""
    from ntkfuse.ntk import target_logprob
    model, _ = checkpoints["switch"]
    loaded = _load(checkpoints, "switch")
    b = _target_batch()
    i = 1
    n = int(b["decoder_attention_mask"][i].sum())
    labels = torch.from_numpy(b["decoder_input_ids"][i:i + 1, 1:n].astype(np.int64))
    with torch.no_grad():
        loss = model(input_ids=torch.from_numpy(b["input_ids"][i:i + 1].astype(np.int64)),
                     attention_mask=torch.from_numpy(b["attention_mask"][i:i + 1].astype(np.int64)),
                     labels=labels).loss.item()
    ours = float(target_logprob()(loaded.cfg, loaded.params, {k: jnp.asarray(v[i]) for k, v in b.items()}))
    assert abs(ours + loss * (n - 1)) < 1e-4 * abs(ours)


def test_output_error_uses_each_side_mask(checkpoints):
    from ntkfuse.compress import compress
    from ntkfuse.ntk import output_error
    loaded = _load(checkpoints, "switch")
    cfg, params = loaded.cfg, loaded.params
    b = seq2seq_batch()
    new = compress(cfg, params, "prune", [3], 16, jax.random.PRNGKey(0))
    e = output_error(cfg, params, new, [b])
    assert e["layer_index"] == cfg.hidden_state_index(3) == 5 and e["tokens"] == b["decoder_attention_mask"].sum()
    assert e["layer"] > 0 and e["logits"] > 0
    enc = output_error(cfg, params, compress(cfg, params, "prune", [1], 16, jax.random.PRNGKey(0)), [b],
                       cfg.hidden_state_index(1))
    assert enc["layer_index"] == 2 and enc["tokens"] == b["attention_mask"].sum() and enc["layer"] > 0
    assert output_error(cfg, params, params, [b])["logits"] == 0.0


# --------------------------------------------------------------------------- the ntk_compare CLI


def test_ntk_compare_cli_on_tiny_switch(tmp_path, capsys):
    from ntkfuse.data import load_examples, make_batch
    from tests.experiments.conftest import _tokenizer
    d = tmp_path / "switch"
    d.mkdir()
    V = _tokenizer("roberta", d)   # <s> 0, <pad> 1, </s> 2
    torch.manual_seed(0)
    cfg = transformers.SwitchTransformersConfig(**{**BASE, "vocab_size": V, "pad_token_id": 1, "eos_token_id": 2,
                                                   "decoder_start_token_id": 1, "expert_capacity": 4})
    transformers.SwitchTransformersForConditionalGeneration(cfg).save_pretrained(d)
    loaded = ntkfuse.load(d)
    b = make_batch(loaded.cfg, loaded.tokenizer, load_examples("sample:webnlg", 2), 16)
    assert set(b) == {"input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask", "target_mask"}
    assert (b["decoder_input_ids"][:, 0] == 1).all() and (b["target_mask"][:, 0] == 0).all()
    res = compare_methods(d, tmp_path, capsys)
    assert res["config"]["data"] == "sample:webnlg"
