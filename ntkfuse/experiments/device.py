"""What the run ran on: recorded in every result file and printed at the start."""
from __future__ import annotations

import jax


def describe_device() -> dict:
    """{platform, kind, count, jax}: JAX's default backend, its first device's kind
    (e.g. 'cpu', 'NVIDIA H100 80GB HBM3'), the number of devices and JAX's version."""
    d = jax.devices()[0]
    return {"platform": jax.default_backend(), "kind": getattr(d, "device_kind", str(d)),
            "count": jax.device_count(), "jax": jax.__version__}


__all__ = ["describe_device"]
