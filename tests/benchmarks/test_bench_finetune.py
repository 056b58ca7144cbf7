"""benchmarks/bench_finetune.py: the comparison it reports and its argument checks (the
timed rows themselves need a GPU for meaning; `--small` is the smoke run)."""
from __future__ import annotations

import pytest

from benchmarks import bench_finetune as bf
from benchmarks.harness import BenchError


def _row(step_s, mem):
    return {"median_step_s": step_s, "peak_mem_gb": mem}


OURS = {"full": _row(0.040, 3.0), "dense": _row(0.030, 2.0), "fusion": _row(0.032, 2.1)}
PEER = {"rows": [_row(0.063, 3.93), _row(0.0469, 3.01)]}


def test_compare_ratios_savings_and_targets():
    c = bf.compare(OURS, PEER, "fp32", comparable=True)
    assert c["vs_peer"]["full"]["speedup"] == pytest.approx(0.063 / 0.040)
    assert c["vs_peer"]["fusion"]["speedup"] == pytest.approx(0.0469 / 0.032)   # vs the peer's compressed row
    assert c["vs_peer"]["dense"]["memory_ratio"] == pytest.approx(2.0 / 3.01)
    assert c["peer_saving"]["time"] == pytest.approx(1 - 0.0469 / 0.063)
    assert c["ntkfuse_saving"]["dense"]["memory"] == pytest.approx(1 - 2.0 / 3.0)
    t = c["targets_met"]
    assert t["full: speedup >= 1.3"] is True and t["fusion: speedup >= 1.3"] is True
    assert t["full: peak memory <= peer"] is True
    assert t["dense: time saving >= peer's"] is False           # 25.0 % < the peer's 25.6 %
    assert t["dense: memory saving >= peer's"] is True          # 33.3 % >= 23.4 %
    assert bf.compare(OURS, PEER, "bf16", comparable=True)["targets_met"]["full: speedup >= 2.0"] is False


def test_targets_not_checked_when_shapes_differ_and_no_peer():
    assert isinstance(bf.compare(OURS, PEER, "fp32", comparable=False)["targets_met"], str)
    c = bf.compare(OURS, None, "fp32", comparable=False)
    assert set(c) == {"ntkfuse_saving"}


@pytest.mark.parametrize("argv, match", [
    (["--small", "--kinds", "full,lowrank"], "unknown kind"),
    (["--small", "--models", "bert"], "unknown model"),
    (["--small", "--layers", "3"], "out of range"),
    (["--small", "--width", "0"], "width"),
    (["--small", "--peer", "/nonexistent/peer.py"], "no such file"),
])
def test_bad_arguments_fail_before_any_row(argv, match, tmp_path):
    with pytest.raises(BenchError, match=match):
        bf.main([*argv, "--out", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()
