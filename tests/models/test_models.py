"""ModelConfig, random init, MLP kinds and forward properties that hold exactly
(identities between MLP kinds, causality, padding invariance), without HF models."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkfuse
from ntkfuse.models import (SUPPORTED_MODEL_TYPES, DenseMLP, FusedMLP, LinearMLP, LowRankLinearMLP, LowRankMLP,
                            ModelConfig, UnsupportedModelError, activation_fn, apply_mlp, count_params)

RTOL = 1e-5


def tiny_cfg(family, **kw):
    base = dict(family=family, vocab_size=50, hidden=16, intermediate=32, num_layers=2, num_heads=2,
                max_positions=24, activation="gelu_tanh" if family == "gpt2" else "gelu",
                head="lm" if family == "gpt2" else "classifier", num_labels=3,
                pad_token_id=1 if family == "roberta" else 0)
    base.update(kw)
    return ModelConfig(**base)


_PARAMS = {}


def tiny_model(family):
    """(cfg, params) per family, initialised once per session (eager init compiles many small ops)."""
    if family not in _PARAMS:
        cfg = tiny_cfg(family)
        _PARAMS[family] = cfg, ntkfuse.init_params(cfg, jax.random.PRNGKey(0))
    return _PARAMS[family]


def batch_of(cfg, seed=0, masked_tail=0):
    """(2, 8) batch with all keys present so that every jitted call below shares one compilation."""
    ids = np.random.default_rng(seed).integers(3, cfg.vocab_size, (2, 8))
    mask = np.ones_like(ids)
    if masked_tail:
        mask[1, -masked_tail:] = 0
        ids[1, -masked_tail:] = cfg.pad_token_id
    return {"input_ids": ids, "attention_mask": mask}


def fwd(cfg, params, batch):
    return ntkfuse.jit_forward(cfg, params, {k: jnp.asarray(v) for k, v in batch.items()}, True)


def close(a, b, rtol=RTOL):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    assert np.linalg.norm(a - b) <= rtol * max(np.linalg.norm(b), 1e-30), np.linalg.norm(a - b) / np.linalg.norm(b)


# --------------------------------------------------------------------------- config


def test_unsupported_family_lists_supported():
    with pytest.raises(UnsupportedModelError) as e:
        tiny_cfg("t5")
    from ntkfuse.models import FAMILIES
    for name in FAMILIES:   # the error names families; model types are named by from_hf_config's error
        assert name in str(e.value)
    listed = "bert, roberta, gpt2, llama, mistral, qwen2, mixtral, switch_transformers"
    with pytest.raises(UnsupportedModelError, match=listed):
        ModelConfig.from_hf_config({"model_type": "t5"})
    for name in SUPPORTED_MODEL_TYPES:
        assert name in listed


@pytest.mark.parametrize("kw,match", [({"num_heads": 3}, "not divisible"), ({"head": "pooler"}, "unknown head"),
                                      ({"head": "lm"}, "not available")])
def test_invalid_config(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny_cfg("bert", **kw)


def test_config_is_hashable_and_round_trips():
    cfg = tiny_cfg("roberta")
    assert hash(cfg) == hash(tiny_cfg("roberta")) and cfg == tiny_cfg("roberta")
    assert ModelConfig.from_dict({**cfg.to_dict(), "unknown_field": 1}) == cfg
    assert cfg.replace(num_labels=5).num_labels == 5 and cfg.head_dim == 8


def test_from_hf_config_maps_fields():
    transformers = pytest.importorskip("transformers")
    r = ModelConfig.from_hf_config(transformers.RobertaConfig(
        vocab_size=77, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=40, layer_norm_eps=1e-5, pad_token_id=1, id2label={0: "a", 1: "b", 2: "c"}))
    assert (r.family, r.vocab_size, r.hidden, r.intermediate, r.num_layers, r.num_heads, r.max_positions) == \
        ("roberta", 77, 48, 96, 3, 4, 40)
    assert (r.activation, r.layer_norm_eps, r.pad_token_id, r.num_labels, r.head) == \
        ("gelu", 1e-5, 1, 3, "classifier")
    g = ModelConfig.from_hf_config(transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4,
                                                           n_positions=64, bos_token_id=0,
                                                           eos_token_id=0).to_dict())
    assert (g.family, g.hidden, g.intermediate, g.activation, g.layer_norm_eps, g.head) == \
        ("gpt2", 32, 128, "gelu_tanh", 1e-5, "lm")
    b = ModelConfig.from_hf_config(transformers.BertConfig(hidden_size=32, num_attention_heads=4), head="none",
                                   num_labels=7)
    assert (b.family, b.type_vocab_size, b.layer_norm_eps, b.head, b.num_labels) == ("bert", 2, 1e-12, "none", 7)
    with pytest.raises(UnsupportedModelError, match="activation"):
        ModelConfig.from_hf_config({**transformers.BertConfig().to_dict(), "hidden_act": "swish"})


# --------------------------------------------------------------------------- init and forward shapes


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2"])   # llama: tests/models/test_llama.py
def test_init_params_and_output_shapes(family):
    cfg, params = tiny_model(family)
    assert len(params["layers"]) == cfg.num_layers
    mlp = ntkfuse.get_mlp(params, 1)
    assert isinstance(mlp, DenseMLP) and mlp.w1.shape == (32, 16) and mlp.w2.shape == (16, 32)
    batch = batch_of(cfg)
    ntkfuse.check_batch(cfg, batch)
    out = fwd(cfg, params, batch)
    assert out.last_hidden.shape == (2, 8, 16)
    assert out.logits.shape == ((2, 8, cfg.vocab_size) if family == "gpt2" else (2, cfg.num_labels))
    assert len(out.hidden_states) == cfg.num_layers + 1
    assert len(out.mlp_inputs) == len(out.mlp_outputs) == cfg.num_layers
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(out))
    np.testing.assert_array_equal(np.asarray(out.hidden_states[-1]), np.asarray(out.last_hidden))
    none = fwd(cfg.replace(head="none"), params, batch)
    assert none.logits is None
    close(none.last_hidden, out.last_hidden)


def test_init_params_is_deterministic_in_the_key():
    cfg = tiny_cfg("bert", num_layers=1)
    a, b, c = (ntkfuse.init_params(cfg, jax.random.PRNGKey(k)) for k in (0, 0, 1))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.allclose(np.asarray(c["embed"]["word"]), np.asarray(a["embed"]["word"]))


# --------------------------------------------------------------------------- forward properties


def test_gpt2_is_causal():
    """Changing token t changes no position before t."""
    cfg, params = tiny_model("gpt2")
    batch = batch_of(cfg, seed=1)
    changed = {**batch, "input_ids": batch["input_ids"].copy()}
    changed["input_ids"][:, 5] = (changed["input_ids"][:, 5] + 1) % cfg.vocab_size
    a, b = fwd(cfg, params, batch), fwd(cfg, params, changed)
    np.testing.assert_array_equal(np.asarray(a.logits)[:, :5], np.asarray(b.logits)[:, :5])
    assert not np.allclose(np.asarray(a.logits)[:, 5:], np.asarray(b.logits)[:, 5:])


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_padding_content_is_ignored(family):
    """Masked positions do not influence real ones, whatever token they hold."""
    cfg, params = tiny_model(family)
    batch = batch_of(cfg, seed=2, masked_tail=3)
    other = {**batch, "input_ids": batch["input_ids"].copy()}
    if family == "bert":
        other["input_ids"][1, -3:] = 7
    else:  # RoBERTa's position ids come from the pad id: change the padded tokens' type instead
        other["token_type_ids"] = np.zeros_like(batch["input_ids"])
        batch = {**batch, "token_type_ids": other["token_type_ids"].copy()}
        batch["token_type_ids"][1, -3:] = 1
    a, b = fwd(cfg, params, batch), fwd(cfg, params, other)
    close(b.logits, a.logits)
    close(np.asarray(b.last_hidden)[1, :5], np.asarray(a.last_hidden)[1, :5])
    # ...while changing a real token does change the result.
    real = {**batch, "input_ids": batch["input_ids"].copy()}
    real["input_ids"][1, 2] = 4 if real["input_ids"][1, 2] != 4 else 5
    assert not np.allclose(np.asarray(fwd(cfg, params, real).logits), np.asarray(a.logits))


def test_roberta_position_ids_skip_padding():
    from ntkfuse.models.families.bert import roberta_position_ids
    cfg = tiny_cfg("roberta")
    ids = jnp.array([[0, 5, 6, 2, 1, 1], [0, 7, 1, 8, 2, 1]])
    np.testing.assert_array_equal(np.asarray(roberta_position_ids(cfg, ids)),
                                  [[2, 3, 4, 5, 1, 1], [2, 3, 1, 4, 5, 1]])


# --------------------------------------------------------------------------- MLP kinds: exact identities


def _normal(seed, *shape):
    """Random test data from numpy: no per-shape compilation of jax.random under a busy CPU."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _dense(seed, d=6, D=10):
    return DenseMLP(_normal(seed, D, d), _normal(seed + 100, D), _normal(seed + 200, d, D), _normal(seed + 300, d))


@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_dense_with_duplicated_neurons_equals_fused_with_counts(act):
    """Fusion's identity (METHOD.md §2): k centroids with counts n_j equal a width-Σn_j block whose
    neurons repeat each centroid n_j times."""
    base = _dense(0, D=4)
    counts = (1, 3, 2, 4)
    rep = np.repeat(np.arange(4), counts)
    dup = DenseMLP(base.w1[rep], base.b1[rep], base.w2[:, rep], base.b2)
    fused = FusedMLP(base.w1, base.b1, base.w2, base.b2, counts=counts)
    x = _normal(1, 5, 6)
    close(apply_mlp(fused, x, act), apply_mlp(dup, x, act))
    close(apply_mlp(fused.fold(), x, act), apply_mlp(dup, x, act))
    assert fused.width == 4 and dup.width == 10


def test_fused_counts_are_fixed_not_trainable():
    from ntkfuse.frozen import trainable_grad
    base = _dense(0, D=3)
    fused = FusedMLP(base.w1, base.b1, base.w2, base.b2, counts=(2, 1, 5))
    leaves = jax.tree_util.tree_leaves(fused)
    assert len(leaves) == 5 and count_params(fused) == count_params(base)   # a leaf, not a parameter
    x = _normal(1, 4, 6)
    _, g = trainable_grad(lambda m: apply_mlp(m, x, "gelu").sum())(fused)
    assert isinstance(g, FusedMLP) and g.counts is None
    # d/dW2[:, j] = n_j σ(...): the gradient wrt centroid j scales with n_j.
    h = jax.nn.gelu(x @ base.w1.T + base.b1, approximate=False)
    close(g.w2, jnp.broadcast_to((h * jnp.array([2.0, 1.0, 5.0])).sum(0), (6, 3)))


def test_low_rank_with_exact_factors_equals_dense():
    base = _dense(4)
    u1, v1, u2, v2 = _normal(5, 10, 3), _normal(6, 3, 6), _normal(7, 6, 2), _normal(8, 2, 10)
    lr = LowRankMLP(u1, v1, base.b1, u2, v2, base.b2)
    dense = DenseMLP(u1 @ v1, base.b1, u2 @ v2, base.b2)
    x = _normal(6, 4, 6)
    close(apply_mlp(lr, x, "gelu"), apply_mlp(dense, x, "gelu"))
    assert lr.rank == 3 and count_params(lr) == 10 * 3 + 3 * 6 + 10 + 6 * 2 + 2 * 10 + 6


def test_linear_kinds():
    u, v, b = _normal(7, 6, 2), _normal(8, 2, 6), _normal(9, 6)
    x = _normal(8, 3, 6)
    close(apply_mlp(LowRankLinearMLP(u, v, b), x, "gelu"), apply_mlp(LinearMLP(u @ v, b), x, "gelu"))
    close(apply_mlp(LinearMLP(u @ v, None), x, "relu"), x @ (u @ v).T)
    # An identity-activation dense block is the linear map W2 W1 x + W2 b1 + b2.
    d = _dense(9)
    close(apply_mlp(d, x, "identity"), apply_mlp(LinearMLP(d.w2 @ d.w1, d.w2 @ d.b1 + d.b2), x, "identity"),
          rtol=1e-5)


def test_apply_mlp_and_activation_reject_unknowns():
    with pytest.raises(TypeError, match="DenseMLP"):
        apply_mlp({"w1": 1}, jnp.ones(3), "gelu")
    with pytest.raises(ValueError, match="gelu_tanh"):
        activation_fn("swish")


def test_replace_mlps_swaps_only_the_given_layers():
    cfg, params = tiny_model("bert")
    batch = batch_of(cfg, seed=3)
    ref = fwd(cfg, params, batch)
    old = ntkfuse.get_mlp(params, 1)
    same = FusedMLP(old.w1, old.b1, old.w2, old.b2, counts=(1,) * old.width)
    new = ntkfuse.replace_mlps(params, {1: same})
    assert ntkfuse.get_mlp(params, 1) is old and isinstance(ntkfuse.get_mlp(new, 1), FusedMLP)
    assert new["layers"][0] is params["layers"][0] and new["embed"] is params["embed"]
    close(fwd(cfg, new, batch).logits, ref.logits)
    zero = LinearMLP(jnp.zeros((16, 16)), None)
    out = fwd(cfg, ntkfuse.replace_mlps(params, {0: zero}), batch)
    np.testing.assert_array_equal(np.asarray(out.mlp_outputs[0]), 0.0)
    close(out.mlp_inputs[0], ref.mlp_inputs[0])
    with pytest.raises(IndexError, match="out of range"):
        ntkfuse.replace_mlps(params, {2: same})
