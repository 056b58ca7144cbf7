"""Run a check in a fresh Python with 8 host (CPU) devices: XLA_FLAGS must be set before JAX
initialises, and the pytest process has already initialised it with one device."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_on_8_devices(code: str, timeout: int = 300) -> str:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    prelude = "import jax\nassert jax.device_count() == 8, jax.devices()\n"
    res = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"subprocess failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return res.stdout


def assert_same_kmeans(one, many) -> None:
    """Sharded k-means (`many`) equals the one-device result: labels, counts and iteration
    counts exactly, centroids and inertia to float32 round-off (called inside the subprocess)."""
    import numpy as np
    for a, b, name in zip(one, many, one._fields):
        assert np.shape(a) == np.shape(b), name
        if name in ("labels", "counts", "n_iter"):
            np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=name)
        else:
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6, err_msg=name)
