"""Locating a checkpoint: local directories, hub ids (offline), clear errors."""
from __future__ import annotations

import uuid

import pytest

import ntkfuse
from ntkfuse import CheckpointError


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


