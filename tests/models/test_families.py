"""The family registry: lookup and errors, what each family declares, HF config reading
per family (dropout rates included), and the family-specific batch checks."""
from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkfuse
from ntkfuse.models import FAMILIES, SUPPORTED_MODEL_TYPES, ModelConfig, UnsupportedModelError, get_family
from ntkfuse.models.families import Family, family_for_model_type

PACKAGE = Path(ntkfuse.__file__).parent


def test_registry_is_immutable_and_names_match():
    assert tuple(FAMILIES) == ("bert", "roberta", "gpt2", "llama", "mixtral", "switch")
    assert SUPPORTED_MODEL_TYPES == ("bert", "roberta", "gpt2", "llama", "mistral", "qwen2", "mixtral",
                                     "switch_transformers")
    with pytest.raises(TypeError):
        FAMILIES["t5"] = FAMILIES["bert"]
    for name, fam in FAMILIES.items():
        assert isinstance(fam, Family) and fam.name == name and get_family(name) is fam
        assert family_for_model_type(fam.model_types[0]) is fam


def test_unknown_family_names_the_supported_ones():
    with pytest.raises(UnsupportedModelError,
                       match="unsupported model family 't5'; supported: bert, roberta, gpt2, llama, mixtral, switch"):
        get_family("t5")
    with pytest.raises(UnsupportedModelError,
                       match="model_type 't5'.*bert, roberta, gpt2, llama, mistral, qwen2, mixtral, switch_transformers"):
        family_for_model_type("t5")


@pytest.mark.parametrize("name,head,data,output,decoder,token_types", [
    ("bert", "classifier", "sample:sentiment", "class-prob", False, True),
    ("roberta", "classifier", "sample:sentiment", "class-prob", False, True),
    ("gpt2", "lm", "sample:webnlg", "target-logprob", True, False),
    ("llama", "lm", "sample:webnlg", "target-logprob", True, False),
    ("mixtral", "lm", "sample:webnlg", "target-logprob", True, False),
    ("switch", "lm", "sample:webnlg", "target-logprob", False, False)])   # an encoder-decoder, not a causal LM
def test_family_defaults(name, head, data, output, decoder, token_types):
    fam = get_family(name)
    assert (fam.default_head, fam.default_data, fam.default_output, fam.is_decoder, fam.token_types) == \
        (head, data, output, decoder, token_types)
    cfg = ModelConfig(family=name, vocab_size=10, hidden=8, intermediate=16, num_layers=1, num_heads=2,
                      max_positions=8, head=head)
    assert cfg.is_decoder == decoder and "none" in fam.heads


def test_no_family_test_outside_the_family_modules():
    """Everything family-specific is asked of the registry: no `.family ==` / `!=` elsewhere."""
    pattern = re.compile(r"\.family\s*[!=]=|[!=]=\s*\w*\.family\b")
    offenders = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py") if "families" not in p.parts
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


# --------------------------------------------------------------------------- HF configs


def test_dropout_rates_from_hf_configs():
    transformers = pytest.importorskip("transformers")
    b = ModelConfig.from_hf_config(transformers.BertConfig(hidden_size=32, num_attention_heads=4,
                                                           hidden_dropout_prob=0.15,
                                                           attention_probs_dropout_prob=0.05))
    assert (b.dropout, b.attention_dropout, b.embed_dropout, b.classifier_dropout) == (0.15, 0.05, None, None)
    r = ModelConfig.from_hf_config(transformers.RobertaConfig(hidden_size=32, num_attention_heads=4,
                                                              classifier_dropout=0.3))
    assert (r.dropout, r.attention_dropout, r.classifier_dropout) == (0.1, 0.1, 0.3)
    g = ModelConfig.from_hf_config(transformers.GPT2Config(n_embd=32, n_head=4, resid_pdrop=0.2, embd_pdrop=0.25,
                                                           attn_pdrop=0.05))
    assert (g.dropout, g.attention_dropout, g.embed_dropout) == (0.2, 0.05, 0.25)
    same = ModelConfig.from_hf_config(transformers.GPT2Config(n_embd=32, n_head=4))
    assert (same.dropout, same.embed_dropout) == (0.1, None)
    assert ModelConfig.from_dict(g.to_dict()) == g


def test_new_fields_default_off_and_are_checked():
    cfg = ModelConfig(family="bert", vocab_size=10, hidden=8, intermediate=16, num_layers=1, num_heads=2,
                      max_positions=8)
    assert (cfg.scan_layers, cfg.remat, cfg.dropout, cfg.attention_dropout) == (False, False, 0.0, 0.0)
    for name in ("dropout", "attention_dropout", "embed_dropout", "classifier_dropout"):
        with pytest.raises(ValueError, match=f"{name} must be in"):
            cfg.replace(**{name: 1.0})


# --------------------------------------------------------------------------- batch checks


@pytest.mark.parametrize("family,reserved", [("bert", 0), ("roberta", 2), ("gpt2", 0), ("llama", 0)])
def test_position_limit(family, reserved):
    """RoBERTa's position ids start after the pad id: it loses pad_token_id + 1 positions."""
    cfg = ModelConfig(family=family, vocab_size=10, hidden=8, intermediate=16, num_layers=1, num_heads=2,
                      max_positions=12, pad_token_id=1 if family == "roberta" else 0,
                      head=get_family(family).default_head)
    limit = 12 - reserved
    ntkfuse.check_batch(cfg, {"input_ids": np.full((1, limit), 3)})
    with pytest.raises(ValueError, match=f"sequence length {limit + 1} exceeds the model's {limit} positions"):
        ntkfuse.check_batch(cfg, {"input_ids": np.full((1, limit + 1), 3)})


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2", "llama"])
def test_token_type_range_checked_only_where_the_family_has_token_types(family):
    cfg = ModelConfig(family=family, vocab_size=10, hidden=8, intermediate=16, num_layers=1, num_heads=2,
                      max_positions=12, type_vocab_size=2 if get_family(family).token_types else 0,
                      head=get_family(family).default_head)
    batch = {"input_ids": np.full((1, 4), 3), "token_type_ids": np.array([[0, 1, 2, 0]])}
    if get_family(family).token_types:
        with pytest.raises(ValueError, match=r"token_type_ids outside \[0, 2\)"):
            ntkfuse.check_batch(cfg, batch)
    else:
        ntkfuse.check_batch(cfg, batch)


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2", "llama"])
def test_init_is_the_family_init(family):
    cfg = ModelConfig(family=family, vocab_size=10, hidden=8, intermediate=16, num_layers=2, num_heads=2,
                      max_positions=12, head=get_family(family).default_head)
    a = ntkfuse.init_params(cfg, jax.random.PRNGKey(0))
    b = get_family(family).init(cfg, jax.random.PRNGKey(0), np.float32)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    assert ("token_type" in a["embed"]) == get_family(family).token_types
    assert ("ln_f" in a) == get_family(family).is_decoder


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, 514, 5000])
def test_embed_lookup_is_the_gather_exactly(rows, dtype):
    """Small tables go through a one-hot matmul (a matmul gradient instead of a colliding
    scatter-add); it must equal the gather bit for bit, and so must its gradient in value."""
    from ntkfuse.models.layers import embed_lookup
    rng = np.random.default_rng(rows)
    table = jnp.asarray(rng.normal(size=(rows, 24)), dtype)
    ids = jnp.asarray(rng.integers(0, rows, (3, 7)), jnp.int32)
    np.testing.assert_array_equal(np.asarray(embed_lookup(table, ids), np.float32),
                                  np.asarray(table[ids], np.float32))
    ct = jnp.asarray(rng.normal(size=(3, 7, 24)), jnp.float32)
    g1 = jax.grad(lambda t: jnp.sum(embed_lookup(t, ids).astype(jnp.float32) * ct))(table.astype(jnp.float32))
    g2 = jax.grad(lambda t: jnp.sum(t[ids] * ct))(table.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(g1), np.asarray(g2), rtol=1e-6, atol=1e-6)
