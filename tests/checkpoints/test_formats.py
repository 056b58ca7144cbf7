"""Weight-file readers: damaged files of each format give a CheckpointError naming the file."""
from __future__ import annotations

import json

import numpy as np
import pytest

import ntkfuse
from ntkfuse import CheckpointError
from ntkfuse.checkpoints import read_weights


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


