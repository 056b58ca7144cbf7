"""Names of the compute dtypes ntkfuse accepts, in one place (the lowest layer: every
other module may import it)."""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16}


def as_dtype(dtype) -> Any:
    """'float32'/'fp32'/'bfloat16'/'bf16' -> the jnp dtype; anything else passes through."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use float32 or bfloat16")
        return DTYPES[dtype]
    return dtype


__all__ = ["DTYPES", "as_dtype"]
