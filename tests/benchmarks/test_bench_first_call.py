"""The first-call bench's pieces: XLA flag sets parsed from the command line, and the split of
a first call into tracing, lowering and XLA compilation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from benchmarks import harness
from benchmarks.bench_first_call import parse_flag_sets


def test_flag_sets_parse_and_refuse_a_nameless_item():
    assert parse_flag_sets("a=--x=1 --y=2; b=--z=0;") == {"a": "--x=1 --y=2", "b": "--z=0"}
    assert parse_flag_sets("") == {}
    with pytest.raises(harness.BenchError, match="NAME=FLAGS"):
        parse_flag_sets("--xla_gpu_autotune_level=1")


def test_compile_phases_count_only_what_compiles_inside_the_block():
    f = jax.jit(lambda x: jnp.tanh(x) @ x.T)
    x = jnp.ones((8, 8))
    with harness.CompilePhases() as first:
        f(x).block_until_ready()
    with harness.CompilePhases() as again:     # cached: nothing traced or compiled
        f(x).block_until_ready()
    assert first.seconds["trace_s"] > 0 and first.seconds["backend_compile_s"] > 0
    assert again.seconds == {"trace_s": 0.0, "lower_s": 0.0, "backend_compile_s": 0.0}
