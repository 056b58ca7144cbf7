"""ntk_compare with several rows at once (`CompareConfig.jobs`, issue 12): the same rows as one
at a time, k-means still shared, errors raised, the CLI flag and its timings file."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from ntkfuse.cli import compare_main
from ntkfuse.experiments import compare

TIMING_KEYS = ("compress_s", "kernel_s", "out_err_s", "time_s", "kmeans_s", "kmeans_reused")


def _plan(tiny_models, **kw):
    base = dict(model=str(tiny_models["roberta"]), methods=("fusion", "cluster", "sketch", "prune", "svd"),
                layers=(1, 2), width=16, n_examples=6, max_length=16, n_init=2, task_examples=20, task_folds=4,
                seeds=(0, 1), per_layer=True)
    return compare.prepare(compare.CompareConfig(**{**base, **kw}))


def test_concurrent_rows_equal_one_at_a_time(tiny_models):
    """Same programs, same inputs: every number of every row is bit-identical; fusion and cluster
    of one seed still share one k-means (cluster starts after fusion and reuses it)."""
    one = compare.run(_plan(tiny_models, jobs=1), None, progress=False)
    many = compare.run(_plan(tiny_models, jobs=2), None, progress=False)
    assert (one["jobs"], many["jobs"]) == (1, 2)
    ids = [(r["method"], r["seed"]) for r in one["results"]]
    assert ids == [(r["method"], r["seed"]) for r in many["results"]]
    assert ids == [("fusion", 0), ("fusion", 1), ("cluster", 0), ("cluster", 1), ("sketch", 0), ("sketch", 1),
                   ("prune", None), ("svd", None)]
    for a, b in zip(one["results"], many["results"]):
        keys = set(a) - set(TIMING_KEYS)
        assert keys == set(b) - set(TIMING_KEYS)
        for k in keys:
            assert a[k] == b[k], (a["method"], a["seed"], k)
    for seed in (0, 1):
        reused = [r["kmeans_reused"] for r in many["results"] if r["method"] in ("fusion", "cluster")
                  and r["seed"] == seed]
        assert sorted(reused) == [False, True]
    for k in ("ntk", "sign"):
        np.testing.assert_array_equal(one["reference"][f"{k}_spectrum"], many["reference"][f"{k}_spectrum"])


def test_a_failing_row_raises_and_finished_rows_resume(tiny_models, tmp_path, monkeypatch):
    import ntkfuse.compress as C
    real = C.compress

    def compress(cfg, p, method, *a, **k):
        if method == "svd":
            raise RuntimeError("svd broke")
        return real(cfg, p, method, *a, **k)

    monkeypatch.setattr(C, "compress", compress)
    plan = _plan(tiny_models, methods=("prune", "svd"), seeds=(0,), jobs=2, per_layer=False, task_examples=0)
    with pytest.raises(RuntimeError, match="svd broke"):
        compare.run(plan, tmp_path / "run", progress=False)
    monkeypatch.setattr(C, "compress", real)
    saved = sorted(p.name for p in (tmp_path / "run" / "methods").glob("*.json"))
    assert set(saved) <= {"prune.json"}
    res = compare.run(plan, tmp_path / "run", progress=False)
    assert [r["method"] for r in res["results"]] == ["prune", "svd"]
    assert res["reused"] == (["prune"] if saved else [])


def test_resolve_jobs():
    import jax
    assert jax.default_backend() == "cpu"
    assert compare.resolve_jobs(0, 9) == 1            # auto on a CPU: compiling and running share the cores
    assert compare.resolve_jobs(5, 2) == 2            # never more than the rows to run
    assert compare.resolve_jobs(3, 0) == 1
    assert compare.resolve_jobs(3, 7) == 3


def test_cli_jobs_flag_timings_file_and_bad_jobs(tiny_models, tmp_path, capsys):
    out = tmp_path / "run"
    rc = compare_main(["--model", str(tiny_models["roberta"]), "--methods", "prune,magnitude", "--layers", "1",
                       "--width", "16", "--n-examples", "4", "--max-length", "16", "--task-examples", "0",
                       "--jobs", "2", "--out", str(out), "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert json.loads((out / "results.json").read_text())["jobs"] == 2
    t = json.loads((out / "timings.json").read_text())
    assert t["jobs"] == 2 and set(t) == {"load_s", "run_s", "reports_s", "jobs", "cli_s"}
    assert 0 < t["run_s"] < t["cli_s"] and t["load_s"] + t["run_s"] + t["reports_s"] <= t["cli_s"]
    assert re.search(r"wall time [\d.]+ s \(this process: loading [\d.]+ s, runs [\d.]+ s, reports [\d.]+ s; "
                     r"reused methods: none\)", cap.out)
    rc = compare_main(["--model", str(tiny_models["roberta"]), "--jobs", "-1", "--out", str(tmp_path / "never")])
    err = capsys.readouterr().err
    assert rc == 2 and "--jobs must be an integer >= 0 (0: auto), got -1" in err and "Traceback" not in err
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("jobs", [1, 2])
def test_every_kernel_and_output_runs_under_the_run_precision(tiny_models, monkeypatch, jobs):
    """JAX keeps the matmul precision per thread: worker threads must set it themselves, or a
    GPU would compute their kernels in TF32."""
    import jax
    seen = []
    for name in ("_all_kernels", "row_output_error"):
        real = getattr(compare, name)

        def spy(*a, _real=real, **k):
            seen.append(jax.config.jax_default_matmul_precision)
            return _real(*a, **k)
        monkeypatch.setattr(compare, name, spy)
    plan = _plan(tiny_models, methods=("prune", "magnitude", "svd"), seeds=(0,), jobs=jobs, per_layer=False,
                 task_examples=0)
    compare.run(plan, None, progress=False)
    assert len(seen) == 2 + 2 * 3 - (1 if jobs == 1 else 0)   # reference kernels (+ its outputs with jobs > 1)
    assert set(seen) == {"highest"}


def test_precision_is_checked_and_hashed(tiny_models):
    with pytest.raises(compare.CompareError, match=r"--precision.*'tf32'.*highest, default"):
        _plan(tiny_models, precision="tf32")
    a, b = _plan(tiny_models, precision="highest"), _plan(tiny_models, precision="default")
    assert a.config_hash != b.config_hash
    assert _plan(tiny_models, jobs=3).config_hash == a.config_hash      # speed only
