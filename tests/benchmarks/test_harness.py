"""benchmarks/harness.py: the timing, rates, records and JSON every benchmark uses."""
from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import pytest

from benchmarks import harness


def test_time_calls_counts_first_warmup_and_repeats():
    calls = []
    t = harness.time_calls(lambda: calls.append(1) or len(calls), 4, warmup=3, sync=harness.no_sync)
    assert len(calls) == 1 + 2 + 4 and len(t.times) == 4 and t.out == 7
    assert t.first_s >= 0 and all(x >= 0 for x in t.times)
    assert t.median_s == sorted(t.times)[1:3][0] / 2 + sorted(t.times)[1:3][1] / 2
    s = t.summary(count=100)
    assert set(s) == {"median_s", "min_s", "max_s", "tokens_per_s", "first_call_s", "times_s"}
    assert s["tokens_per_s"] == pytest.approx(100 / t.median_s)


def test_time_calls_first_replaces_the_first_call_and_syncs_jax():
    f = jax.jit(lambda x: x @ x)
    x = jnp.ones((8, 8))
    t = harness.time_calls(lambda: f(x), 2, first=lambda: ("plan", f(x)))
    assert t.out[0] == "plan" and float(t.out[1][0, 0]) == 8.0
    t0 = harness.time_calls(lambda: f(x), 0)
    assert t0.times == [] and math.isnan(t0.median_s) and float(t0.out[0, 0]) == 8.0


@pytest.mark.parametrize("count, seconds, expected", [(10, 2.0, 5.0), (10, 0.0, math.nan), (10, math.nan, math.nan)])
def test_rate(count, seconds, expected):
    r = harness.rate(count, seconds)
    assert (math.isnan(r) and math.isnan(expected)) or r == expected


def test_records_and_json(tmp_path):
    d = harness.device()
    assert d["platform"] == jax.default_backend() and d["jax"] == jax.__version__
    assert {"ntkfuse", "jax", "numpy", "python"} <= set(harness.versions())
    peak = harness.peak_memory_bytes()
    assert peak is None or peak >= 0
    p = harness.write_json(tmp_path / "a" / "r.json", {"x": 1.5, "t": (1, 2), "o": object()})
    r = json.loads(p.read_text())
    assert r["x"] == 1.5 and r["t"] == [1, 2] and r["o"].startswith("<object")


@pytest.mark.parametrize("spec, expected", [("2-5", [2, 3, 4, 5]), ("4,5,6", [4, 5, 6]), ("1-2,7", [1, 2, 7])])
def test_parse_layers(spec, expected):
    assert harness.parse_layers(spec) == expected


@pytest.mark.parametrize("spec", ["x", "5-2", "1,1"])
def test_bad_layers_and_choices_exit_with_one_line(spec):
    with pytest.raises(SystemExit):
        harness.parse_layers(spec)
    with pytest.raises(harness.BenchError, match="unknown methods foo; valid: a, b"):
        harness.check_choices("methods", ["a", "foo"], ("a", "b"))
