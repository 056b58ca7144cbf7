"""Loading: every bad config or weight set gives a clear error naming the problem, before any
array reaches the model; good inputs in each dtype give params of that dtype."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkfuse
from ntkfuse import CheckpointError
from ntkfuse.dtypes import as_dtype
from tests.checkpoints.conftest import edit_config


# --------------------------------------------------------------------------- config


def test_unsupported_model_type_lists_supported(roberta_copy):
    d = roberta_copy()
    edit_config(d, model_type="t5")
    with pytest.raises(CheckpointError) as e:
        ntkfuse.load(d, tokenizer=False)
    msg = str(e.value)
    assert "'t5'" in msg and "config.json" in msg
    for name in ("bert", "roberta", "gpt2"):
        assert name in msg


def test_invalid_config_json(roberta_copy):
    d = roberta_copy()
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ntkfuse.load(d, tokenizer=False)


def test_shapes_that_do_not_match_config(roberta_copy):
    d = roberta_copy()
    edit_config(d, intermediate_size=48)
    with pytest.raises(CheckpointError, match="shapes do not match") as e:
        ntkfuse.load(d, tokenizer=False)
    assert "intermediate.dense.weight" in str(e.value) and "(64, 32)" in str(e.value)


def test_missing_weights_are_listed(roberta_copy):
    from safetensors.numpy import load_file, save_file
    d = roberta_copy()
    t = load_file(d / "model.safetensors")
    del t["roberta.encoder.layer.1.output.dense.bias"]
    save_file(t, d / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing weights") as e:
        ntkfuse.load(d, tokenizer=False)
    assert "encoder.layer.1.output.dense.bias" in str(e.value)


def test_non_finite_weights(roberta_copy):
    from safetensors.numpy import load_file, save_file
    d = roberta_copy()
    t = load_file(d / "model.safetensors")
    t["roberta.embeddings.LayerNorm.weight"][3] = np.nan
    save_file(t, d / "model.safetensors")
    with pytest.raises(CheckpointError, match="NaN or inf"):
        ntkfuse.load(d, tokenizer=False)


# --------------------------------------------------------------------------- batches and dtypes


def test_token_ids_outside_vocabulary(tiny_roberta):
    cfg = ntkfuse.load(tiny_roberta.dir, tokenizer=False).cfg
    ok = {"input_ids": np.array([[0, 5, 99]]), "attention_mask": np.ones((1, 3), int)}
    ntkfuse.check_batch(cfg, ok)
    for bad in (100, -1):
        batch = {**ok, "input_ids": np.array([[0, bad, 4]])}
        with pytest.raises(ValueError, match="outside the vocabulary") as e:
            ntkfuse.check_batch(cfg, batch)
        assert str(bad) in str(e.value) and "100" in str(e.value)


def test_bad_batch_shapes(tiny_roberta):
    cfg = ntkfuse.load(tiny_roberta.dir, tokenizer=False).cfg
    with pytest.raises(ValueError, match="attention_mask has shape"):
        ntkfuse.check_batch(cfg, {"input_ids": np.zeros((2, 3), int), "attention_mask": np.ones((2, 4), int)})
    with pytest.raises(ValueError, match="exceeds"):
        ntkfuse.check_batch(cfg, {"input_ids": np.zeros((1, cfg.max_positions), int)})


@pytest.mark.parametrize("name", ["float16", "fp64", "int8", "bfloat"])
def test_unknown_dtype_name(tiny_roberta, name):
    with pytest.raises(ValueError, match="unknown dtype") as e:
        ntkfuse.load(tiny_roberta.dir, dtype=name, tokenizer=False)
    assert name in str(e.value) and "float32" in str(e.value) and "bfloat16" in str(e.value)


@pytest.mark.parametrize("dtype,expected", [("float32", jnp.float32), ("fp32", jnp.float32),
                                            ("bfloat16", jnp.bfloat16), ("bf16", jnp.bfloat16),
                                            (jnp.bfloat16, jnp.bfloat16)])
def test_dtype_names(dtype, expected):
    assert as_dtype(dtype) == expected


@pytest.mark.parametrize("fmt", ["safetensors", "flax"])
def test_load_bfloat16_gives_bf16_params(tiny_roberta, fmt):
    f32 = ntkfuse.load(tiny_roberta.dirs[fmt], tokenizer=False).params
    bf = ntkfuse.load(tiny_roberta.dirs[fmt], dtype="bfloat16", tokenizer=False).params
    leaves = jax.tree_util.tree_leaves(bf)
    assert leaves and all(x.dtype == jnp.bfloat16 for x in leaves)
    # The bf16 values are the float32 ones rounded, not something else.
    for a, b in zip(leaves, jax.tree_util.tree_leaves(f32)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b.astype(jnp.bfloat16)))


# --------------------------------------------------------------------------- layering


def test_lower_layers_do_not_import_checkpoints():
    """models, ntk and data sit below or beside checkpoint I/O: none of them imports it."""
    import re
    from pathlib import Path
    root = Path(ntkfuse.__file__).parent
    pattern = re.compile(r"^\s*(from\s+(\.\.|ntkfuse\.)checkpoints|import\s+ntkfuse\.checkpoints)", re.M)
    offenders = [str(p.relative_to(root)) for sub in ("models", "ntk", "data") for p in (root / sub).rglob("*.py")
                 if pattern.search(p.read_text())]
    assert offenders == []


def test_tokenize_lives_with_the_data_code():
    from ntkfuse.data.tokenize import tokenize
    assert ntkfuse.tokenize is tokenize
