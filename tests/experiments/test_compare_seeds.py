"""ntk_compare over seeds (issue 11): which methods repeat, mean ± std, the lead rule,
per-layer kernels, kernel classification, both protocols side by side, resume per
(method, seed)."""
from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from ntkfuse.cli import compare_main
from ntkfuse.experiments import compare, spread


def _cli(capsys, *args):
    rc = compare_main([str(a) for a in args] + ["--no-progress"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _args(model_dir, out, methods, *extra):
    return ["--model", model_dir, "--methods", methods, "--layers", "1-2", "--width", "16", "--n-examples", "6",
            "--max-length", "16", "--n-init", "1", "--task-examples", "20", "--task-folds", "4", "--out", out,
            *extra]


# --------------------------------------------------------------------------- which methods are random


@pytest.mark.parametrize("method", ["fusion", "cluster", "sketch", "prune", "magnitude", "svd", "mmd"])
def test_seeds_change_random_methods_only(tiny_models, method):
    """The declaration RANDOM_METHODS is true: a different key changes exactly these methods."""
    import jax
    import ntkfuse
    from ntkfuse import compress as C
    assert C.RANDOM_METHODS <= set(C.METHODS)
    cfg, params, _, _ = ntkfuse.load(str(tiny_models["roberta"]))
    opts = {"n_init": 1} if method in ("fusion", "cluster") else ({"steps": 3} if method == "mmd" else {})
    a, b = (C.compress(cfg, params, method, (1, 2), 16, compare.method_key(s, method), **opts) for s in (0, 1))
    same = all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    assert same != compare.is_random(method)


# --------------------------------------------------------------------------- spread


def test_summary_mean_std_equal_direct_computation():
    rows = [{"method": "a", "seed": s, "x": v, "y": 2 * v} for s, v in enumerate([0.1, 0.4, 0.25])]
    rows += [{"method": "b", "seed": None, "x": 3.0, "y": 1.0}]
    summ = {r["method"]: r for r in compare.summarise(rows)}
    v = np.array([0.1, 0.4, 0.25])
    assert summ["a"]["x"] == pytest.approx(v.mean(), rel=1e-15)
    assert summ["a"]["x_std"] == pytest.approx(np.sqrt(((v - v.mean()) ** 2).sum() / 2), rel=1e-14)
    assert summ["a"]["y_std"] == pytest.approx(2 * np.std(v, ddof=1), rel=1e-14)
    assert summ["a"]["x_values"] == [0.1, 0.4, 0.25] and summ["a"]["n"] == 3 and summ["a"]["seeds"] == [0, 1, 2]
    assert (summ["b"]["x"], summ["b"]["x_std"], summ["b"]["n"]) == (3.0, 0.0, 1)


@pytest.mark.parametrize("stats, lower, expect", [
    ({"a": (0.2, 0.01), "b": (0.3, 0.02), "c": (0.5, 0.0)}, True, ("a", ["a"], True)),      # clear lead
    ({"a": (0.28, 0.06), "b": (0.33, 0.01), "c": (0.7, 0.0)}, True, ("a", ["a", "b"], False)),  # overlap: tie
    ({"a": (0.2, 0.05), "b": (0.3, 0.05)}, True, ("a", ["a", "b"], False)),                   # touching = tie
    ({"a": (0.2, 0.049), "b": (0.3, 0.05)}, True, ("a", ["a"], True)),                        # just apart
    ({"a": (0.8, 0.01), "b": (0.9, 0.02), "c": (0.85, 0.05)}, False, ("b", ["b", "c"], False)),  # higher is better
])
def test_lead_rule(stats, lower, expect):
    assert spread.leader(stats, lower) == expect


def test_verdict_names_ties_and_refuses_single_seed_claims():
    def result(seeds, rows):
        return {"config": {"seeds": seeds, "kernel": ["sign"]}, "results": rows}
    base = dict(mlp_params=1, mlp_params_orig=4)
    rows = [dict(base, method="sketch", seed=s, sign_rel=v) for s, v in enumerate([0.2, 0.3, 0.35])]
    rows += [dict(base, method="fusion", seed=s, sign_rel=v) for s, v in enumerate([0.32, 0.34, 0.35])]
    rows += [dict(method="magnitude", seed=None, sign_rel=0.01, mlp_params=4, mlp_params_orig=4)]
    v = compare.verdict(result([0, 1, 2], rows), "sign_rel", "sign NTK rel")
    assert "sketch" in v and "tied within one std with fusion" in v and "magnitude" not in v
    one = compare.verdict(result([0], rows[:1] + rows[3:4]), "sign_rel", "sign NTK rel")
    assert "single seed" in one and "ahead" not in one
    # A measure not computed (kernel accuracy with --task-examples 0: NaN everywhere) has no verdict,
    # and NaN methods are left out of a measure that others have.
    nan_rows = [dict(r, sign_acc=float("nan")) for r in rows]
    assert compare.verdict(result([0, 1, 2], nan_rows), "sign_acc", "sign kernel accuracy", False) is None
    part = [dict(r, sign_rel=float("nan")) if r["method"] == "sketch" else r for r in rows]
    v = compare.verdict(result([0, 1, 2], part), "sign_rel", "sign NTK rel")
    assert "fusion" in v and "sketch" not in v


# --------------------------------------------------------------------------- kernel classification


def test_cv_accuracy_equals_closed_form_numpy_solve():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(30, 5))
    y = (X[:, 0] + 0.3 * rng.normal(size=30) > 0).astype(int)
    K = X @ X.T + 0.5 * np.eye(30)
    folds = compare.cv_folds(y, 5)
    assert sorted(np.bincount(folds).tolist()) == [6] * 5
    for c in (0, 1):   # stratified: every fold holds each class about equally
        assert np.ptp(np.bincount(folds[y == c], minlength=5)) <= 1
    correct = 0
    for f in range(5):
        te, tr = folds == f, folds != f
        Ktr = K[np.ix_(tr, tr)]
        lam = compare.TASK_RIDGE * np.trace(Ktr) / tr.sum()
        alpha = np.linalg.solve(Ktr + lam * np.eye(tr.sum()), np.where(y[tr] == 1, 1.0, -1.0))
        correct += int(((K[np.ix_(te, tr)] @ alpha > 0).astype(int) == y[te]).sum())
    assert compare.cv_accuracy(K, y, 5, 2) == correct / 30


# --------------------------------------------------------------------------- per-layer kernels, measures


def test_per_layer_kernels_sum_to_full_and_rows_equal_direct_measures(tiny_models):
    from ntkfuse import ntk
    plan = compare.prepare(compare.CompareConfig(model=str(tiny_models["roberta"]), methods=("prune",),
                                                 layers=(1, 2), width=16, n_examples=6, max_length=16,
                                                 task_examples=20, task_folds=4, seeds=(0,), per_layer=True))
    assert plan.per_layer and plan.task_batch is not None and len(plan.task_labels) == 20
    K_ref = compare.reference_kernels(plan, None)
    # The vanilla NTK is additive over parameter blocks.
    total = sum(K_ref["layers"][l]["ntk"] for l in (1, 2))
    np.testing.assert_allclose(total, K_ref["full"]["ntk"], rtol=2e-5, atol=1e-6 * np.abs(total).max())
    row = compare.run_method(plan, "prune", K_ref)
    from ntkfuse import compress as C
    new = C.compress(plan.cfg, plan.params, "prune", (1, 2), 16, compare.method_key(0, "prune"))
    K_new = compare._all_kernels(plan, new)
    for l in (1, 2):
        e = ntk.ntk_error(K_new["layers"][l]["sign"], K_ref["layers"][l]["sign"])
        assert row[f"sign_rel_L{l}"] == pytest.approx(e["rel"], rel=1e-12)
    assert row["sign_cka"] == pytest.approx(ntk.centred_kernel_alignment(K_new["full"]["sign"],
                                                                          K_ref["full"]["sign"]), rel=1e-12)
    assert row["ntk_spectrum"] == pytest.approx(np.linalg.eigvalsh(K_new["full"]["ntk"])[::-1].tolist(), rel=1e-9)
    assert row["ntk_acc"] == compare.cv_accuracy(K_new["task"]["ntk"], plan.task_labels, 4, plan.num_classes)


def test_lm_without_labels_skips_kernel_classification_with_a_note(tiny_models):
    plan = compare.prepare(compare.CompareConfig(model=str(tiny_models["gpt2"]), methods=("prune",), layers=(1,),
                                                 width=16, n_examples=4, max_length=16, seeds=(0,), per_layer=True))
    assert plan.task_batch is None and "has no labels" in plan.task_note
    assert not plan.per_layer   # one compressed layer: its kernel is the full kernel


# --------------------------------------------------------------------------- end to end


def test_cli_seeds_rows_csv_resume_per_method_and_seed(tiny_models, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    rc, stdout, err = _cli(capsys, *_args(tiny_models["roberta"], out, "sketch,prune", "--seeds", "0,1",
                                          "--per-layer"))
    assert rc == 0, err
    res = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["seed"]) for r in res["results"]] == [("sketch", 0), ("sketch", 1), ("prune", None)]
    sk = res["results"][:2]
    assert sk[0]["sign_rel"] != sk[1]["sign_rel"]
    summ = {r["method"]: r for r in res["summary"]}
    assert summ["sketch"]["sign_rel"] == pytest.approx(np.mean([r["sign_rel"] for r in sk]), rel=1e-14)
    assert summ["sketch"]["sign_rel_std"] == pytest.approx(np.std([r["sign_rel"] for r in sk], ddof=1), rel=1e-12)
    assert summ["prune"]["n"] == 1 and summ["prune"]["sign_rel_std"] == 0.0
    assert {"sign_rel_L1", "sign_rel_L2", "sign_cka", "sign_acc", "ntk_acc"} <= set(sk[0])
    assert 0 <= res["reference"]["sign_acc"] <= 1 and len(res["reference"]["sign_spectrum"]) == 6
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["seed"]) for r in rows] == [("sketch", "0"), ("sketch", "1"), ("prune", "")]
    assert float(rows[1]["sign_rel_L2"]) == pytest.approx(sk[1]["sign_rel_L2"], rel=1e-12)
    with open(out / "summary.csv") as f:
        srows = {r["method"]: r for r in csv.DictReader(f)}
    assert float(srows["sketch"]["sign_rel_std"]) == pytest.approx(summ["sketch"]["sign_rel_std"], rel=1e-12)
    assert sorted(p.name for p in (out / "methods").iterdir()) == ["prune.json", "sketch__0.json", "sketch__1.json"]
    md = (out / "results.md").read_text()
    assert " ± " in md and "sign NTK rel:" in md and "| original |" in md
    for png in ("ntk_compare.png", "spectra.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert re.search(r"^sketch\s+2\s", stdout, re.M) and "±" in stdout

    # A third seed computes sketch@2 only (compress would fail for anything else).
    import ntkfuse.compress as C
    real = C.compress
    calls = []
    monkeypatch.setattr(C, "compress", lambda cfg, p, m, *a, **k: calls.append((m, a[2])) or real(cfg, p, m, *a, **k))
    rc, stdout, err = _cli(capsys, *_args(tiny_models["roberta"], out, "sketch,prune", "--repeats", "3",
                                          "--per-layer"))
    assert rc == 0, err
    assert len(calls) == 1 and calls[0][0] == "sketch"
    assert "reused methods: sketch@0, sketch@1, prune" in stdout
    res3 = json.loads((out / "results.json").read_text())
    assert [r["sign_rel"] for r in res3["results"][:2]] == [r["sign_rel"] for r in sk]


def test_cli_both_protocols_side_by_side_and_render(tiny_models, tmp_path, capsys):
    import importlib.util
    from pathlib import Path
    out = tmp_path / "both"
    rc, stdout, err = _cli(capsys, *_args(tiny_models["roberta"], out, "sketch,prune", "--seeds", "0,1",
                                          "--protocols", "reference,multi-layer"))
    assert rc == 0, err
    ref = json.loads((out / "reference" / "results.json").read_text())
    multi = json.loads((out / "multi-layer" / "results.json").read_text())
    assert ref["config"]["layers"] == [0] and ref["config"]["reference_protocol"]
    assert multi["config"]["layers"] == [1, 2] and not multi["config"]["reference_protocol"]
    md = (out / "protocols.md").read_text()
    assert "reference protocol (layer 0)" in md and "multi-layer (layers 1-2)" in md and "Side by side" in md
    assert (out / "protocols.png").read_bytes()[:4] == b"\x89PNG"
    assert "== reference protocol (layer 0)" in stdout and "== multi-layer (layers 1-2)" in stdout
    # Resumable: the same command reuses every row.
    rc, stdout, err = _cli(capsys, *_args(tiny_models["roberta"], out, "sketch,prune", "--seeds", "0,1",
                                          "--protocols", "reference,multi-layer"))
    assert rc == 0, err
    assert "reused methods: sketch@0, sketch@1, prune, sketch@0, sketch@1, prune)" in stdout
    # analysis/render.py renders the new fields (mean ± std) of both directories.
    spec = importlib.util.spec_from_file_location(
        "render", Path(__file__).resolve().parents[2] / "analysis" / "render.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    assert render.main([str(out / "reference"), str(out / "multi-layer"), "--out", str(tmp_path / "sum")]) == 0
    text = (tmp_path / "sum" / "summary.md").read_text()
    assert "Side by side" in text and " ± " in text


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0,0"], r"seeds must be distinct"),
    (["--seeds", "a"], r"cannot parse seeds"),
    (["--seeds", "0", "--seed", "1"], r"give only one of --seeds, --seed"),
    (["--repeats", "0"], r"--repeats must be >= 1"),
    (["--protocols", "paper"], r"bad --protocols 'paper'; choose from reference, multi-layer"),
    (["--task-folds", "1"], r"--task-folds must be an integer >= 2"),
])
def test_bad_seed_and_protocol_arguments(tiny_models, tmp_path, capsys, args, message):
    rc, _, err = _cli(capsys, "--model", tiny_models["roberta"], "--out", tmp_path / "never", *args)
    assert rc == 2 and re.search(message, err.strip().splitlines()[-1]) and "Traceback" not in err
    assert not (tmp_path / "never").exists()
