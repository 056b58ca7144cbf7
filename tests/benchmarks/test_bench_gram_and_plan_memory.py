"""benchmarks/bench_gram.py and benchmarks/diag_plan_memory.py on the CPU (--small): they run end to
end and every Gram formulation equals the float64 reference; the memory diagnosis reads XLA's
analysis of the `layers` programs and sets it beside the planner's shares."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _run(script, *args):
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--small", "--no-compile-cache", *args],
                         capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]


def test_bench_gram_small(tmp_path):
    _run("bench_gram.py", "--repeats", "1", "--variants", "plain,engine,splitk16,concat", "--out", str(tmp_path))
    r = json.loads((tmp_path / "result.json").read_text())
    assert set(r["rows"]) == {"plain/cublas", "plain/triton", "engine/cublas", "splitk16/cublas", "concat/cublas"}
    for name, row in r["rows"].items():
        assert row["median_s"] > 0 and max(row["rel_vs_float64"].values()) < 1e-6, name


def test_diag_plan_memory_small_layers(tmp_path):
    out = tmp_path / "plan.json"
    _run("diag_plan_memory.py", "--n", "512", "--budget-gb", "0.05", "--out", str(out))
    r = json.loads(out.read_text())
    assert r["plan"]["strategy"] == "full" and "kernels_explicit" in r["xla"]
    _run("diag_plan_memory.py", "--n", "2048", "--budget-gb", "0.16", "--out", str(out))
    r = json.loads(out.read_text())
    assert r["plan"]["strategy"] == "layers"
    assert r["xla"]["layer_inputs"]["output_size_in_bytes"] >= r["planner"]["factor_bytes"]
    assert r["peak_estimates"]["during_layer_gram"] > r["planner"]["factor_bytes"]
