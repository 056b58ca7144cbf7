"""benchmarks/bench_scaling.py (issue 15) on 8 forced CPU devices: it runs end to end, the
sharded kernels equal the one-device ones within the issue's 1e-6, and k-means gives the same
labels; timings on emulated devices mean nothing and are not checked."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_scaling_bench_small_on_eight_cpu_devices(tmp_path):
    out = tmp_path / "scaling.json"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_scaling.py"), "--small", "--n", "24",
                          "--repeats", "1", "--no-compile-cache", "--out", str(out)],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["local_devices"] == 8
    row = r["ntk"]["24"]
    assert row["one"]["devices"] == 1 and row["all"]["devices"] == 8
    assert max(row["rel_diff"].values()) <= 1e-6
    assert r["kmeans"]["same_labels"] and r["kmeans"]["inertia_rel_diff"] <= 1e-6
