"""The Llama family (Llama, Mistral, Qwen2 configs): parity with HF PyTorch on tiny random
checkpoints written with save_pretrained (safetensors), loading, GQA, rope scaling, tied and
untied heads, list vs scan stack, fusion identity, the NTK and the ntk_compare CLI.

Tolerance: ‖ours − hf‖ / ‖hf‖ < 1e-5 (test_parity.py uses 1e-4) over non-padding
positions, for the logits and every hidden state.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkfuse
from ntkfuse.models import ModelConfig, UnsupportedModelError
from tests.models.hf_decoders import compare_methods, hf_outputs, padded_batch, save_tiny_decoder, save_variants
from tests.models.test_parity import rel_err

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-5   # 50x the measured error (≤ 2.1e-7); tighter than test_parity.py so that a missing rope scaling fails
BASE = dict(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# name -> (HF config class, extra config fields)
VARIANTS = {
    "llama": ("LlamaConfig", dict(num_key_value_heads=4)),
    "llama_gqa_tied": ("LlamaConfig", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "llama_linear_rope": ("LlamaConfig", dict(num_key_value_heads=2, attention_bias=True,
                                              rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "llama3_rope": ("LlamaConfig", dict(num_key_value_heads=1, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16})),
    "mistral": ("MistralConfig", dict(num_key_value_heads=2, sliding_window=5)),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=2, tie_word_embeddings=False)),
}


def _model(name, seed=0):
    cls, extra = VARIANTS[name]
    torch.manual_seed(seed)
    cfg = getattr(transformers, cls)(**BASE, **extra)
    model = getattr(transformers, cls.replace("Config", "ForCausalLM"))(cfg).eval()
    with torch.no_grad():   # norms and biases away from their init (ones, zeros) so a mapping error shows
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or n.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return save_variants(tmp_path_factory, VARIANTS, _model)


@pytest.mark.parametrize("scan", [False, True], ids=["list", "scan"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_parity_with_hf(checkpoints, name, scan):
    model, d = checkpoints[name]
    loaded = ntkfuse.load(d, tokenizer=False)
    cfg = loaded.cfg.replace(scan_layers=scan)
    assert cfg.family == "llama" and cfg.kv_heads == model.config.num_key_value_heads
    batch = padded_batch()
    out = ntkfuse.jit_forward(cfg, loaded.params, {k: jnp.asarray(v) for k, v in batch.items()}, True)
    logits, hs = hf_outputs(model, batch)
    mask = batch["attention_mask"]
    assert rel_err(out.logits, logits, mask) < TOL
    assert len(out.hidden_states) == len(hs) == cfg.num_layers + 1
    for ours, ref in zip(out.hidden_states, hs):
        assert rel_err(ours, ref, mask) < TOL


def test_config_fields_and_tied_head(checkpoints):
    cfgs = {n: ntkfuse.load(d, tokenizer=False).cfg for n, (_, d) in checkpoints.items()}
    assert cfgs["llama_gqa_tied"].tie_word_embeddings and not cfgs["qwen2"].tie_word_embeddings
    assert cfgs["qwen2"].qkv_bias and not cfgs["qwen2"].out_bias and cfgs["llama_linear_rope"].out_bias
    assert cfgs["mistral"].sliding_window == 5 and cfgs["llama"].sliding_window is None
    assert dict(cfgs["llama3_rope"].rope_scaling)["rope_type"] == "llama3" and cfgs["llama3_rope"].rope_theta == 5e5
    params = ntkfuse.load(checkpoints["llama_gqa_tied"][1], tokenizer=False).params
    assert "lm_head" not in params
    for cfg in cfgs.values():   # JSON round trip keeps the config hashable and equal
        import json
        back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert back == cfg and hash(back) == hash(cfg)
    from ntkfuse.models import get_family
    fam = get_family("llama")
    assert (fam.default_data, fam.default_output, fam.is_decoder) == ("sample:webnlg", "target-logprob", True)


def test_unsupported_rope_type_is_a_clear_error():
    d = transformers.LlamaConfig(**BASE, rope_scaling={"rope_type": "yarn", "factor": 2.0}).to_dict()
    with pytest.raises(UnsupportedModelError, match="rope_type 'yarn'.*supported: default, linear, llama3"):
        ModelConfig.from_hf_config(d)


def test_fusion_with_every_neuron_its_own_cluster_reproduces_the_model(checkpoints):
    loaded = ntkfuse.load(checkpoints["qwen2"][1], tokenizer=False)
    cfg, params = loaded.cfg, loaded.params
    batch = {k: jnp.asarray(v) for k, v in padded_batch().items()}
    D = cfg.intermediate
    from ntkfuse.compress import compress
    new = compress(cfg, params, "fusion", [0, 1, 2], D, jax.random.PRNGKey(0), n_init=1)
    assert all(type(new["layers"][l]["mlp"]).__name__ == "FusedGatedMLP" for l in range(3))
    assert all(np.array_equal(new["layers"][l]["mlp"].counts, np.ones(D)) for l in range(3))
    a = ntkfuse.jit_forward(cfg, params, batch).logits
    b = ntkfuse.jit_forward(cfg, new, batch).logits
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


def test_ntk_target_logprob_on_tiny_llama(checkpoints):
    from ntkfuse.ntk import kernels, mlp_layers, target_logprob
    loaded = ntkfuse.load(checkpoints["llama_gqa_tied"][1], tokenizer=False)
    batch = {k: jnp.asarray(v) for k, v in padded_batch().items()}
    batch["target_mask"] = batch["attention_mask"].at[:, :2].set(0)
    res = kernels(loaded.cfg, loaded.params, batch, output=target_logprob(), selector=mlp_layers([1]))
    K = np.asarray(res["ntk"])
    assert K.shape == (3, 3) and np.all(np.isfinite(K)) and np.allclose(K, K.T, rtol=1e-4)
    assert np.all(np.linalg.eigvalsh(0.5 * (K + K.T)) > -1e-4 * np.abs(K).max())


def test_ntk_compare_cli_on_tiny_llama(tmp_path, capsys):
    d = save_tiny_decoder(tmp_path / "llama", transformers.LlamaConfig, transformers.LlamaForCausalLM, BASE,
                          num_key_value_heads=2)
    compare_methods(d, tmp_path, capsys, ("fusion", "prune", "svd", "magnitude"))


def test_fused_llama_saves_and_restores_bit_identically(checkpoints, tmp_path):
    from ntkfuse.compress import compress, restore_compressed, save_compressed
    loaded = ntkfuse.load(checkpoints["llama3_rope"][1], tokenizer=False)
    new = compress(loaded.cfg, loaded.params, "fusion", [1], 8, jax.random.PRNGKey(0), n_init=1)
    save_compressed(tmp_path / "c", loaded.cfg, new, {"method": "fusion"})
    r = restore_compressed(tmp_path / "c")
    cfg, params = r[0], r[1]
    assert cfg == loaded.cfg
    np.testing.assert_array_equal(params["layers"][1]["mlp"].counts, new["layers"][1]["mlp"].counts)
    batch = {k: jnp.asarray(v) for k, v in padded_batch().items()}
    np.testing.assert_array_equal(np.asarray(ntkfuse.jit_forward(cfg, params, batch).logits),
                                  np.asarray(ntkfuse.jit_forward(loaded.cfg, new, batch).logits))


@pytest.mark.parametrize("name,change", [("mistral", dict(sliding_window=None)), ("llama3_rope", dict(rope_scaling=None)),
                                         ("llama_linear_rope", dict(rope_scaling=None))])
def test_parity_would_catch_a_wrong_field(checkpoints, name, change):
    """The variants exercise their fields: dropping the window or the scaling breaks parity."""
    model, d = checkpoints[name]
    loaded = ntkfuse.load(d, tokenizer=False)
    batch = padded_batch()
    out = ntkfuse.jit_forward(loaded.cfg.replace(**change), loaded.params, {k: jnp.asarray(v) for k, v in batch.items()})
    err = rel_err(out.logits, hf_outputs(model, batch)[0], batch["attention_mask"])
    assert err > 10 * TOL, err
