"""ntkfuse reproduces the kernels of the in-repo PyTorch/torch.func peer (benchmarks/peers/torch_ntk.py)
on the peer's own checkpoint: runs from a plain clone."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import ntkfuse  # noqa: E402
from ntkfuse import ntk  # noqa: E402

from benchmarks.peers import TORCH_NTK as BASELINE  # noqa: E402


def test_reproduces_torch_baseline_kernels(tmp_path):
    cmd = [sys.executable, str(BASELINE), "--n", "6", "--seq", "12", "--layers", "0-1", "--hidden", "32",
           "--intermediate", "64", "--num-layers", "2", "--heads", "4", "--modes", "loop,vmap", "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    cfg, params, _, _ = ntkfuse.load(tmp_path / "checkpoint", tokenizer=False)
    inputs = np.load(tmp_path / "inputs.npz")
    ref = np.load(tmp_path / "kernels.npz")
    batch = {"input_ids": inputs["input_ids"].astype(np.int32), "attention_mask": inputs["attention_mask"]}
    got = ntk.kernels(cfg, params, batch, output=ntk.class_prob(0), selector=ntk.mlp_layers([0, 1]),
                      kinds=("ntk", "sign"))
    for ours, theirs in (("ntk", "K_ntk"), ("sign", "K_sign")):
        K = np.asarray(got[ours], np.float64)
        assert K.shape == (6, 6)
        assert np.linalg.norm(ref[theirs]) > 0
        assert ntk.ntk_error(K, ref[theirs])["rel"] < 1e-4, ours
