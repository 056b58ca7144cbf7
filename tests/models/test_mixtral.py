"""The Mixtral family (sparse MoE decoder, docs/moe.md): parity with HF PyTorch on tiny random
MixtralForCausalLM checkpoints written with save_pretrained (safetensors), in float32 and
bfloat16, both HF expert layouts, the MoE block against HF's MixtralSparseMoeBlock, expert-wise
compression (identity at width D, routing unchanged, accounting), orbax round trip, the NTK and
the ntk_compare CLI.

Tolerance (float32): ‖ours − hf‖ / ‖hf‖ < 1e-4 over non-padding positions, for the logits and
every hidden state (measured ≤ 1.8e-7).
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkfuse
from ntkfuse.models import ModelConfig
from ntkfuse.models.blocks import FusedGatedMLP, GatedMLP, MoEMLP
from tests.models.hf_decoders import compare_methods, hf_outputs, padded_batch, save_tiny_decoder, save_variants
from tests.models.test_parity import rel_err

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
BF16_TOL = 2e-2   # measured ≤ 4.8e-3 (bf16 rounding of every matmul, RMSNorm and routing weight)
BASE = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
            pad_token_id=0, bos_token_id=1, eos_token_id=2)
VARIANTS = {"mixtral": {}, "mixtral_window_top1": dict(sliding_window=5, num_experts_per_tok=1)}


def _model(name, seed=0):
    torch.manual_seed(seed)
    model = transformers.MixtralForCausalLM(transformers.MixtralConfig(**{**BASE, **VARIANTS[name]})).eval()
    with torch.no_grad():   # norms away from ones, a sharper router, so mapping and routing errors show
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
            if n.endswith("gate.weight"):
                p.mul_(20.0)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return save_variants(tmp_path_factory, VARIANTS, _model)


def _jbatch():
    return {k: jnp.asarray(v) for k, v in padded_batch().items()}


def _errors(cfg, params, model, batch):
    out = ntkfuse.jit_forward(cfg, params, {k: jnp.asarray(v) for k, v in batch.items()}, True)
    logits, hs = hf_outputs(model, batch)
    mask = batch["attention_mask"]
    assert len(out.hidden_states) == len(hs) == cfg.num_layers + 1
    return [rel_err(np.asarray(out.logits, np.float32), logits, mask)] + \
        [rel_err(np.asarray(a, np.float32), b, mask) for a, b in zip(out.hidden_states, hs)]


def test_saved_names_are_the_per_expert_layout(checkpoints):
    from safetensors import safe_open
    with safe_open(str(checkpoints["mixtral"][1] / "model.safetensors"), "np") as f:
        keys = set(f.keys())
    assert "model.layers.0.block_sparse_moe.gate.weight" in keys
    assert {f"model.layers.1.block_sparse_moe.experts.3.{w}.weight" for w in ("w1", "w2", "w3")} <= keys


@pytest.mark.parametrize("scan", [False, True], ids=["list", "scan"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_parity_with_hf_float32(checkpoints, name, scan):
    model, d = checkpoints[name]
    loaded = ntkfuse.load(d, tokenizer=False)
    cfg = loaded.cfg.replace(scan_layers=scan)
    assert cfg.family == "mixtral" and cfg.kv_heads == 2 and cfg.num_experts == 4
    assert cfg.experts_per_token == model.config.num_experts_per_tok
    assert cfg.sliding_window == model.config.sliding_window
    block = loaded.params["layers"][0]["mlp"]
    assert isinstance(block, MoEMLP) and all(isinstance(e, GatedMLP) for e in block.experts)
    errs = _errors(cfg, loaded.params, model, padded_batch())
    assert max(errs) < TOL, errs


def test_parity_with_hf_bfloat16(checkpoints):
    model, d = checkpoints["mixtral"]
    loaded = ntkfuse.load(d, dtype="bfloat16", tokenizer=False)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(loaded.params))
    hf16 = transformers.MixtralForCausalLM.from_pretrained(d, dtype=torch.bfloat16).eval()
    errs = _errors(loaded.cfg, loaded.params, hf16, padded_batch())
    assert max(errs) < BF16_TOL, errs


@pytest.mark.parametrize("change", [dict(sliding_window=None), dict(experts_per_token=1), dict(experts_per_token=4)])
def test_parity_would_catch_a_wrong_field(checkpoints, change):
    """The window and top-k are exercised: getting either wrong breaks parity."""
    name = "mixtral_window_top1" if "sliding_window" in change else "mixtral"
    model, d = checkpoints[name]
    loaded = ntkfuse.load(d, tokenizer=False)
    cfg = loaded.cfg.replace(**change)
    params = {**loaded.params, "layers": [
        dict(lp, mlp=MoEMLP(lp["mlp"].router, lp["mlp"].experts, cfg.experts_per_token))
        for lp in loaded.params["layers"]]}
    errs = _errors(cfg, params, model, padded_batch())
    assert errs[0] > 100 * TOL, errs


def test_fused_expert_layout_loads_the_same(checkpoints, tmp_path):
    """transformers 5's in-memory names (mlp.gate, mlp.experts.gate_up_proj / down_proj) load too."""
    from safetensors.torch import save_file
    model, d = checkpoints["mixtral"]
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert "model.layers.0.mlp.experts.gate_up_proj" in sd and "model.layers.0.mlp.gate.weight" in sd
    (tmp_path / "config.json").write_text((d / "config.json").read_text())
    save_file(sd, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    a = ntkfuse.load(d, tokenizer=False).params
    b = ntkfuse.load(tmp_path, tokenizer=False).params
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_moe_block_matches_hf_sparse_moe_block(checkpoints):
    model, d = checkpoints["mixtral"]
    hf_block = model.model.layers[1].mlp
    block = ntkfuse.load(d, tokenizer=False).params["layers"][1]["mlp"]
    x = np.random.default_rng(1).normal(size=(2, 9, 32)).astype(np.float32)
    with torch.no_grad():
        ref = hf_block(torch.from_numpy(x)).numpy()
        _, _, idx = hf_block.gate(torch.from_numpy(x))
    ours = np.asarray(jax.jit(lambda b, x: b(x, jax.nn.silu))(block, jnp.asarray(x)))
    assert rel_err(ours, ref) < 1e-5
    _, ours_idx = block.routing(jnp.asarray(x).reshape(-1, 32))
    assert (np.sort(np.asarray(ours_idx), -1) == np.sort(idx.numpy(), -1)).all()


def test_config_json_round_trip_and_errors(checkpoints):
    cfg = ntkfuse.load(checkpoints["mixtral_window_top1"][1], tokenizer=False).cfg
    back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and hash(back) == hash(cfg) and cfg.experts_per_token == 1 and cfg.sliding_window == 5
    with pytest.raises(ValueError, match="experts_per_token"):
        cfg.replace(experts_per_token=5)
    from ntkfuse.models import get_family
    fam = get_family("mixtral")
    assert fam.is_decoder and fam.default_output == "target-logprob"
    p = ntkfuse.init_params(cfg, jax.random.PRNGKey(0))
    assert jax.tree_util.tree_structure(p) == jax.tree_util.tree_structure(
        ntkfuse.load(checkpoints["mixtral_window_top1"][1], tokenizer=False).params)


def test_fusion_one_neuron_per_cluster_reproduces_the_model(checkpoints):
    from ntkfuse.compress import compress
    loaded = ntkfuse.load(checkpoints["mixtral"][1], tokenizer=False)
    cfg, params = loaded.cfg, loaded.params
    D = cfg.intermediate
    new = compress(cfg, params, "fusion", [0, 1], D, jax.random.PRNGKey(0), n_init=1)
    for l in range(2):
        blk, old = new["layers"][l]["mlp"], params["layers"][l]["mlp"]
        assert isinstance(blk, MoEMLP) and blk.router is old.router and blk.top_k == old.top_k
        assert all(isinstance(e, FusedGatedMLP) and np.array_equal(e.counts, np.ones(D)) for e in blk.experts)
    batch = _jbatch()
    a = ntkfuse.jit_forward(cfg, params, batch, True)
    b = ntkfuse.jit_forward(cfg, new, batch, True)
    np.testing.assert_allclose(np.asarray(b.logits), np.asarray(a.logits), rtol=1e-5, atol=1e-5)
    for l in range(2):   # each layer's MoE output on the original layer input, and each expert
        x = a.mlp_inputs[l]
        old, blk = params["layers"][l]["mlp"], new["layers"][l]["mlp"]
        np.testing.assert_allclose(np.asarray(blk(x, jax.nn.silu)), np.asarray(old(x, jax.nn.silu)),
                                   rtol=1e-5, atol=1e-6)
        for e_new, e_old in zip(blk.experts, old.experts):
            np.testing.assert_allclose(np.asarray(e_new(x, jax.nn.silu)), np.asarray(e_old(x, jax.nn.silu)),
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["fusion", "prune", "sketch"])
def test_expert_compression_keeps_routing_and_counts_per_expert(checkpoints, method):
    from ntkfuse.compress import compress, compress_block, expert_rows, param_count
    loaded = ntkfuse.load(checkpoints["mixtral"][1], tokenizer=False)
    cfg, params = loaded.cfg, loaded.params
    key = jax.random.PRNGKey(1)
    opts = {"n_init": 2} if method == "fusion" else {}
    new = compress(cfg, params, method, [1], 16, key, **opts)
    old_b, new_b = params["layers"][1]["mlp"], new["layers"][1]["mlp"]
    assert new["layers"][0]["mlp"] is params["layers"][0]["mlp"]
    assert new_b.expert_widths == (16,) * 4
    x = ntkfuse.jit_forward(cfg, params, _jbatch(), True).mlp_inputs[1]
    for u, v in zip(new_b.routing(x), old_b.routing(x)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    # compress() on a layer equals compress_block with that layer's key (expert e: fold_in(key, e))
    want = compress_block(old_b, method, 16, jax.random.split(key, 1)[0], activation="silu", **opts)
    for a, b in zip(jax.tree_util.tree_leaves(new_b), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    rows = expert_rows(new, [1])
    assert [r["expert"] for r in rows] == [0, 1, 2, 3] and all(r["width"] == 16 for r in rows)
    per = 3 * 16 * cfg.hidden
    assert all(r["params"] == per for r in rows)
    assert param_count(new, [1]) == 4 * cfg.hidden + 4 * per == new_b.param_count()
    assert new_b.flops_per_token() == new_b.router_flops_per_token() + 2 * rows[0]["flops_per_token"]


def test_kmeans_layers_shared_by_fusion_and_cluster(checkpoints):
    from ntkfuse.compress import CompressionError, compress, kmeans_layers
    loaded = ntkfuse.load(checkpoints["mixtral"][1], tokenizer=False)
    cfg, params = loaded.cfg, loaded.params
    key = jax.random.PRNGKey(2)
    km = kmeans_layers(params, [0], 8, key, n_init=1)
    assert isinstance(km[0], tuple) and len(km[0]) == 4
    a = compress(cfg, params, "fusion", [0], 8, key, n_init=1)
    b = compress(cfg, params, "fusion", [0], 8, key, n_init=1, kmeans_result=km)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(CompressionError, match="tuple of one KMeansResult per expert"):
        compress(cfg, params, "fusion", [0], 8, key, n_init=1, kmeans_result={0: km[0][0]})


def test_compressed_mixtral_saves_and_restores_bit_identically(checkpoints, tmp_path):
    from ntkfuse.compress import compress, restore_compressed, save_compressed
    loaded = ntkfuse.load(checkpoints["mixtral"][1], tokenizer=False)
    new = compress(loaded.cfg, loaded.params, "fusion", [1], 8, jax.random.PRNGKey(0), n_init=1)
    save_compressed(tmp_path / "c", loaded.cfg, new, {"method": "fusion"})
    cfg, params = restore_compressed(tmp_path / "c")[:2]
    assert cfg == loaded.cfg
    np.testing.assert_array_equal(params["layers"][1]["mlp"].experts[2].counts,
                                  new["layers"][1]["mlp"].experts[2].counts)
    batch = _jbatch()
    np.testing.assert_array_equal(np.asarray(ntkfuse.jit_forward(cfg, params, batch).logits),
                                  np.asarray(ntkfuse.jit_forward(loaded.cfg, new, batch).logits))


def test_ntk_on_tiny_mixtral_uses_explicit_gradients(checkpoints):
    from ntkfuse.ntk import kernels, mlp_layers, target_logprob
    from ntkfuse.ntk.kernels import NTKConfigError
    loaded = ntkfuse.load(checkpoints["mixtral"][1], tokenizer=False)
    batch = _jbatch()
    batch["target_mask"] = batch["attention_mask"].at[:, :2].set(0)
    res = kernels(loaded.cfg, loaded.params, batch, output=target_logprob(), selector=mlp_layers([1]))
    K = np.asarray(res["ntk"])
    assert K.shape == (3, 3) and np.all(np.isfinite(K)) and np.allclose(K, K.T, rtol=1e-4)
    with pytest.raises(NTKConfigError, match="strategy 'tokens'"):
        kernels(loaded.cfg, loaded.params, batch, output=target_logprob(), selector=mlp_layers([1]),
                kinds=("ntk",), strategy="tokens")
    # The router is frozen in fine-tuning, so the default kernel leaves it out: it equals the sum of
    # the experts' per-leaf kernels, and asking for the router adds its (non-zero) Gram.
    from ntkfuse.ntk import by_path, per_example_grads
    sel = mlp_layers([1])
    assert not any("router" in p for p in sel.paths(loaded.params))
    assert any("router" in p for p in mlp_layers([1], train_router=True).paths(loaded.params))
    experts = by_path(lambda p: p[:3] == ("layers", 1, "mlp") and "experts" in p)
    K_exp = np.asarray(kernels(loaded.cfg, loaded.params, batch, output=target_logprob(), selector=experts)["ntk"])
    np.testing.assert_allclose(K, K_exp, rtol=1e-5, atol=1e-7 * np.abs(K).max())
    K_r = np.asarray(kernels(loaded.cfg, loaded.params, batch, output=target_logprob(),
                             selector=mlp_layers([1], train_router=True))["ntk"])
    g = per_example_grads(loaded.cfg, loaded.params, batch, output=target_logprob(),
                          selector=by_path(lambda p: p[:3] == ("layers", 1, "mlp") and p[-1] == "router",
                                           train_router=True))
    gr = np.asarray(g["layers"][1]["mlp"].router, np.float64).reshape(3, -1)
    assert np.abs(gr).max() > 0
    np.testing.assert_allclose(K_r, K + gr @ gr.T, rtol=1e-4, atol=1e-6 * np.abs(K_r).max())


def test_ntk_compare_cli_on_tiny_mixtral(tmp_path, capsys):
    d = save_tiny_decoder(tmp_path / "mixtral", transformers.MixtralConfig, transformers.MixtralForCausalLM, BASE)
    compare_methods(d, tmp_path, capsys)
