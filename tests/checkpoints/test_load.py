"""Every bad input to the loader gives a clear error naming the problem, before any
array reaches the model; good inputs in each dtype give params of that dtype."""
from __future__ import annotations

import json
import shutil
import uuid

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkfuse
from ntkfuse import CheckpointError
from ntkfuse.checkpoints import read_weights
from ntkfuse.dtypes import as_dtype


@pytest.fixture
def roberta_copy(tiny_roberta, tmp_path):
    """A private copy of a tiny checkpoint directory per format, safe to damage."""
    def copy(fmt="safetensors"):
        dst = tmp_path / fmt
        shutil.copytree(tiny_roberta.dirs[fmt], dst)
        return dst
    return copy


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


# --------------------------------------------------------------------------- locating


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found") as e:
        ntkfuse.load(tmp_path / "no_such_model", tokenizer=False)
    assert "no_such_model" in str(e.value)


def test_file_instead_of_directory_and_missing_config(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        ntkfuse.load(f, tokenizer=False)
    with pytest.raises(CheckpointError, match="no config.json"):
        ntkfuse.load(tmp_path, tokenizer=False)


def test_unreachable_hub_id_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)           # read at import time by huggingface_hub
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))    # an empty cache: nothing to fall back on
    repo = f"ntkfuse-test/no-such-model-{uuid.uuid4().hex[:12]}"
    with pytest.raises(CheckpointError, match="not reachable") as e:
        ntkfuse.load(repo, tokenizer=False)
    msg = str(e.value)
    assert repo in msg and "HF_HUB_OFFLINE" in msg and "cache" in msg


def test_no_weight_file(roberta_copy):
    d = roberta_copy()
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weight file found") as e:
        ntkfuse.load(d, tokenizer=False)
    assert "model.safetensors" in str(e.value) and "flax_model.msgpack" in str(e.value)


# --------------------------------------------------------------------------- config


def test_unsupported_model_type_lists_supported(roberta_copy):
    d = roberta_copy()
    _edit_config(d, model_type="t5")
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
    _edit_config(d, intermediate_size=48)
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


# --------------------------------------------------------------------------- damaged files


def test_truncated_safetensors(roberta_copy):
    d = roberta_copy()
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated safetensors") as e:
        ntkfuse.load(d, tokenizer=False)
    assert str(f) in str(e.value)
    f.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="truncated safetensors"):
        ntkfuse.load(d, tokenizer=False)


def test_corrupt_safetensors_header(roberta_copy):
    d = roberta_copy()
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:16] = b"\xff" * 8   # the JSON header is no longer JSON
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        ntkfuse.load(d, tokenizer=False)


def test_empty_weight_file(roberta_copy):
    d = roberta_copy()
    (d / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty weight file"):
        ntkfuse.load(d, tokenizer=False)


def test_missing_shard(roberta_copy):
    d = roberta_copy("sharded")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (d / shard).unlink()
    with pytest.raises(CheckpointError, match="is missing") as e:
        ntkfuse.load(d, tokenizer=False)
    assert shard in str(e.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_flax_msgpack(roberta_copy, damage):
    d = roberta_copy("flax")
    f = d / "flax_model.msgpack"
    data = f.read_bytes()
    # 0xc1 is the one byte msgpack never uses, so garbage cannot parse as a valid object.
    f.write_bytes(data[: len(data) * 2 // 3] if damage == "truncate" else b"\xc1" + data[1:])
    with pytest.raises(CheckpointError, match="corrupt or truncated Flax msgpack") as e:
        ntkfuse.load(d, tokenizer=False)
    assert str(f) in str(e.value)


def test_msgpack_that_is_not_a_params_tree(roberta_copy):
    import msgpack
    d = roberta_copy("flax")
    (d / "flax_model.msgpack").write_bytes(msgpack.packb([1, 2, 3]))
    with pytest.raises(CheckpointError, match="not a Flax params tree"):
        ntkfuse.load(d, tokenizer=False)


def test_flax_params_wrapper_is_accepted(roberta_copy, tiny_roberta):
    """A msgpack with a top-level {"params": ...} (flax's own convention) reads the same."""
    from flax.serialization import msgpack_restore, msgpack_serialize
    d = roberta_copy("flax")
    f = d / "flax_model.msgpack"
    f.write_bytes(msgpack_serialize({"params": msgpack_restore(f.read_bytes())}))
    wrapped, _ = read_weights(d)
    plain, _ = read_weights(tiny_roberta.dirs["flax"])
    assert wrapped.keys() == plain.keys()
    for k in plain:
        np.testing.assert_array_equal(wrapped[k], plain[k])


def test_corrupt_torch_bin(roberta_copy):
    d = roberta_copy("bin")
    f = d / "pytorch_model.bin"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated PyTorch checkpoint"):
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
