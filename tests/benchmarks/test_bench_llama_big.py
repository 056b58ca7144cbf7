"""benchmarks/bench_llama_big.py --small end to end on CPU: every stage runs and records its time
and memory, the compressed model is smaller, the kernels are finite (timings on a tiny model
mean nothing and are not checked)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_llama_big as bench
from benchmarks.harness import BenchError

ROOT = Path(__file__).resolve().parents[2]


def test_llama_big_small_end_to_end(tmp_path):
    out = tmp_path / "big.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_llama_big.py"), "--small",
                          "--no-compile-cache", "--out", str(out)],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    st = r["stages"]
    assert list(st) == ["write", "load", "compress", "perplexity_original", "perplexity_compressed",
                        "ntk_original", "ntk_compressed"]
    for row in st.values():
        assert row["wall_s"] > 0 and row["host_rss_peak_gb"] > 0
    assert st["load"]["n_params"] == bench.rc.n_params(bench.rc.SMALL)
    assert st["compress"]["param_bytes"] < st["load"]["param_bytes"]
    ppl = st["perplexity_original"]["perplexity"]
    assert 1 < ppl < 10 * bench.rc.SMALL["vocab_size"]
    assert st["perplexity_original"]["tokens_scored"] == st["perplexity_compressed"]["tokens_scored"]
    assert st["ntk_original"]["finite"] and st["ntk_compressed"]["finite"]
    assert st["ntk_original"]["first_call_s"] >= st["ntk_original"]["median_s"]
    assert 0 < r["ntk_rel_error"] < 10


@pytest.mark.parametrize("argv, match", [(["--stages", "load,bogus"], "unknown stages"),
                                         (["--layers", "2-9"], "out of range"),
                                         (["--ntk-layers", "4"], "out of range"),
                                         (["--checkpoint", "/nonexistent"], "no readable config.json")])
def test_bad_arguments(argv, match, tmp_path):
    with pytest.raises(BenchError, match=match):
        bench.parse_args(["--small", *argv, "--out", str(tmp_path / "r.json")])
