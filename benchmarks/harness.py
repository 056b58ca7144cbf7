"""What every benchmark needs, written once: timing with warm-up (first call, which
includes compilation, kept apart; median of the timed calls), rates, device and version
records, peak device memory where the backend reports it, atomic JSON output, and the
`--small` switch for CPU-sized runs, the `--no-compile-cache` switch (JAX's persistent
compilation cache is on by default, as for the scripts).

A bench is run as `python benchmarks/bench_<name>.py` (or `python -m benchmarks.bench_<name>`)
from the repository root.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional


class BenchError(SystemExit):
    """Bad benchmark arguments: the message is printed and the process exits with status 1."""


def block(x):
    """Wait for JAX work in `x` to finish (the default `sync` of `time_calls`)."""
    import jax
    return jax.block_until_ready(x)


def no_sync(x):
    return x


@dataclasses.dataclass
class Timing:
    """Seconds of the first call (incl. compilation) and of each timed call; `out` is the
    last call's result."""
    first_s: float
    times: list
    out: Any = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def min_s(self) -> float:
        return min(self.times) if self.times else float("nan")

    def summary(self, count: Optional[float] = None, unit: str = "tokens") -> dict:
        """{median_s, min_s, max_s, <unit>_per_s (when `count` is given), first_call_s, times_s}."""
        d = {"median_s": self.median_s, "min_s": self.min_s, "max_s": max(self.times) if self.times else math.nan}
        if count is not None:
            d[f"{unit}_per_s"] = rate(count, self.median_s)
        d.update(first_call_s=self.first_s, times_s=list(self.times))
        return d


def time_calls(fn: Callable[[], Any], repeats: int, *, warmup: int = 1, sync: Callable = block,
               first: Optional[Callable[[], Any]] = None) -> Timing:
    """Time `fn`: one first call (timed alone: compilation), `warmup - 1` more untimed calls,
    then `repeats` timed calls, each ended by `sync` on its result. `first` replaces `fn`
    for the first call (e.g. the same work also returning a plan); its result is `out`
    when `repeats` is 0."""
    t0 = time.perf_counter()
    out = sync((first or fn)())
    first_s = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        sync(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out_r = sync(fn())
        times.append(time.perf_counter() - t0)
        if first is None:
            out = out_r
    return Timing(first_s, times, out)


class CompilePhases:
    """Seconds JAX spent tracing, lowering and compiling (XLA) inside a `with` block, from
    `jax.monitoring`'s duration events: where a first call's time goes."""
    EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
              "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
              "/jax/core/compile/backend_compile_duration": "backend_compile_s"}
    _totals: dict = {}
    _registered = False

    def __enter__(self):
        if not CompilePhases._registered:
            from jax import monitoring

            def listen(name, secs, **_):
                if name in CompilePhases.EVENTS:
                    key = CompilePhases.EVENTS[name]
                    CompilePhases._totals[key] = CompilePhases._totals.get(key, 0.0) + secs
            monitoring.register_event_duration_secs_listener(listen)
            CompilePhases._registered = True
        self._start = dict(CompilePhases._totals)
        return self

    def __exit__(self, *exc):
        self.seconds = {v: CompilePhases._totals.get(v, 0.0) - self._start.get(v, 0.0)
                        for v in CompilePhases.EVENTS.values()}
        return False


def rate(count: float, seconds: float) -> float:
    """count / seconds (e.g. tokens/s, FLOP/s); NaN when no time was measured."""
    return count / seconds if seconds and math.isfinite(seconds) and seconds > 0 else float("nan")


def device() -> dict:
    """JAX's device record ({platform, kind, count, jax}: ntkfuse.experiments.describe_device)."""
    from ntkfuse.experiments.device import describe_device
    return describe_device()


def versions(**extra) -> dict:
    """{ntkfuse, jax, numpy, python} versions plus `extra` (e.g. torch=torch.__version__)."""
    from ntkfuse.experiments.records import versions as v
    return v(**extra)


def peak_memory_bytes() -> Optional[int]:
    """Peak bytes in use on JAX's first device so far (process maximum), where the backend
    reports it (GPU); None on backends without memory statistics (CPU)."""
    import jax
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - a backend without the query
        return None
    return stats.get("peak_bytes_in_use")


def write_json(path: str | Path, result: dict, indent: int = 2, default: Callable = str) -> Path:
    """`result` as JSON, written atomically (a reader never sees a partial file)."""
    from ntkfuse.files import atomic_write
    atomic_write(path, json.dumps(result, indent=indent, default=default))
    return Path(path)


class _NoCompileCache(argparse.Action):
    """`--no-compile-cache`: turns the persistent compilation cache off as the flag is parsed."""

    def __call__(self, parser, namespace, values, option_string=None):
        from ntkfuse.cli import use_compile_cache
        use_compile_cache(False)
        setattr(namespace, self.dest, True)


def add_small(parser: argparse.ArgumentParser, help: str) -> None:
    """The flags every bench has: `--small` (CPU-sized shapes and fewer repeats) and
    `--no-compile-cache`. Building the parser turns JAX's persistent compilation cache on
    (`ntkfuse.cli.compile_cache_dir()`), before anything compiles; the flag turns it off
    when parsed, for first-call timings that include a cold compilation."""
    from ntkfuse.cli import CACHE_ENV, DEFAULT_CACHE_DIR, use_compile_cache
    parser.add_argument("--small", action="store_true", help=help)
    parser.add_argument("--no-compile-cache", action=_NoCompileCache, nargs=0, default=False,
                        help=f"do not use JAX's persistent compilation cache (default: on, in ${CACHE_ENV} or "
                             f"{DEFAULT_CACHE_DIR}; first-call times then include a cold compilation)")
    use_compile_cache(True)


def roberta_cfg(small: bool = False):
    """roberta-base's shape (d=768, D=3072, 12 layers, 12 heads, 2 labels) as an ntkfuse
    ModelConfig, or a tiny one of the same family for CPU runs (d=32, D=128, 4 layers)."""
    import ntkfuse
    return ntkfuse.ModelConfig(family="roberta", vocab_size=1000 if small else 50265, hidden=32 if small else 768,
                               intermediate=128 if small else 3072, num_layers=4 if small else 12,
                               num_heads=4 if small else 12, max_positions=514, type_vocab_size=1, pad_token_id=1,
                               layer_norm_eps=1e-5, num_labels=2)


def parse_layers(spec) -> list:
    """ntkfuse's layer syntax ('2-5', '4,5,6', '1-2,7'), bad input a one-line error."""
    from ntkfuse.validate import parse_layers as parse
    return list(parse(spec, error=BenchError))


def check_choices(name: str, values, choices) -> list:
    """Every item of `values` in `choices`, else a one-line error naming the valid ones."""
    bad = [v for v in values if v not in choices]
    if bad:
        raise BenchError(f"unknown {name} {', '.join(map(str, bad))}; valid: {', '.join(map(str, choices))}")
    return list(values)


__all__ = ["BenchError", "Timing", "time_calls", "rate", "device", "versions", "peak_memory_bytes", "write_json",
           "add_small", "parse_layers", "check_choices", "block", "no_sync"]
