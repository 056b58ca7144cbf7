"""How ntkfuse compiles the programs a user runs once per configuration (NTK kernels, output
errors, k-means, mmd's particle fit): with or without XLA's autotuned Triton GEMMs.

Users run each configuration once, so such a program's first call is its speed. On an H100 at
roberta-base shape (docs/bench/first_call_flags_h100.json) the NTK program's first call took
67 s, 66 s of it XLA compiling and autotuning Triton GEMM fusions (lowering the autotuner's
level or its candidate count saved 3-7 %); with Triton GEMMs off (`xla_gpu_enable_triton_gemm`:
matmuls go to cuBLAS, whose algorithm XLA picks quickly) it took 9.6 s, and the warm call
0.234 s instead of 0.209 s, kernels equal within 1.4e-6 relative; since the engine splits its
skinny Gram products along K on cuBLAS (ntk/kernels.py, `_dot_t`) the warm call is 0.209-0.213 s
against 0.210 s autotuned in the same device call, first call 7.4-9.9 s. So these programs are
compiled without GEMM autotuning by default; `autotune(True)` (or `kernels(autotune=True)`,
`ntk_compare --autotune`) gives the tuned programs for long repeated work. Training steps
(fine-tuning, surrogate fitting, tuning) keep XLA's defaults: they run thousands of times.

The option only touches GPU code generation (CPU and TPU compilers ignore it); the two
programs are cached apart, in memory and in JAX's persistent cache.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Callable, Optional

import jax

NO_AUTOTUNE = {"xla_gpu_enable_triton_gemm": False}

_AUTOTUNE = contextvars.ContextVar("ntkfuse_autotune", default=False)


def autotuning() -> bool:
    """Whether one-shot programs compiled now use XLA's autotuned Triton GEMMs."""
    return _AUTOTUNE.get()


@contextlib.contextmanager
def autotune(enabled: Optional[bool] = True):
    """Within the block, compile one-shot programs with (True) or without (False) GEMM
    autotuning; None leaves the current setting."""
    if enabled is None:
        yield
        return
    token = _AUTOTUNE.set(bool(enabled))
    try:
        yield
    finally:
        _AUTOTUNE.reset(token)


def oneshot_jit(fun: Optional[Callable] = None, **jit_kwargs):
    """`jax.jit` for a one-shot program: two jitted versions of `fun` (autotuned, and not),
    the current `autotuning()` setting picks one per call. Usable as `@oneshot_jit` or
    `@oneshot_jit(static_argnames=...)`."""
    if fun is None:
        return functools.partial(oneshot_jit, **jit_kwargs)
    tuned = jax.jit(fun, **jit_kwargs)
    fast = jax.jit(fun, compiler_options=NO_AUTOTUNE, **jit_kwargs)

    @functools.wraps(fun)
    def call(*args, **kwargs):
        return (tuned if _AUTOTUNE.get() else fast)(*args, **kwargs)

    call.tuned, call.fast = tuned, fast
    call.lower = lambda *a, **k: (tuned if _AUTOTUNE.get() else fast).lower(*a, **k)
    call._cache_size = lambda: tuned._cache_size() + fast._cache_size()   # as jax.jit's (used by tests)
    return call


__all__ = ["NO_AUTOTUNE", "autotuning", "autotune", "oneshot_jit"]
