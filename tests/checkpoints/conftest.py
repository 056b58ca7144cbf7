"""Fixtures of the checkpoint tests: private, damageable copies of the tiny checkpoints."""
from __future__ import annotations

import json
import shutil

import pytest


@pytest.fixture
def roberta_copy(tiny_roberta, tmp_path):
    """A private copy of a tiny checkpoint directory per format, safe to damage."""
    def copy(fmt="safetensors"):
        dst = tmp_path / fmt
        shutil.copytree(tiny_roberta.dirs[fmt], dst)
        return dst
    return copy


def edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))
