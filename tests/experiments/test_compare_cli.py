"""scripts/ntk_compare.py (ntkfuse.cli.compare_main): end to end on tiny random HF
checkpoints, resume, agreement with direct library calls on MiniLM, bad input."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from ntkfuse.cli import compare_main
from ntkfuse.data import load_examples


def _cli(capsys, *args):
    rc = compare_main([str(a) for a in args] + ["--no-progress"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _tiny_args(model_dir, out, methods="fusion,prune", *extra):
    """One seed (one row per method) unless `extra` names seeds itself."""
    seeds = [] if {"--seed", "--seeds", "--repeats"} & set(map(str, extra)) else ["--seeds", "0"]
    return ["--model", model_dir, "--methods", methods, "--layers", "1-2", "--width", "16", "--n-examples", "6",
            "--max-length", "16", "--n-init", "1", "--out", out, *seeds, *extra]


def _check_outputs(out: Path, methods):
    res = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in res["results"]] == list(methods)
    assert {"ntkfuse", "jax", "numpy"} <= set(res["versions"]) and res["device"]["platform"]
    assert res["timestamp"] and res["config"]["n_init"] == 1 and res["config_hash"]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == list(methods)
    for row, r in zip(rows, res["results"]):
        for key in ("ntk_rel", "sign_rel", "ntk_abs", "sign_abs", "out_err_layer", "out_err_logits"):
            assert float(row[key]) == pytest.approx(r[key], rel=1e-12)
            assert np.isfinite(r[key]) and r[key] >= 0
        assert int(row["mlp_params"]) == r["mlp_params"]
    md = (out / "results.md").read_text()
    assert all(f"| {m} |" in md for m in methods)
    png = (out / "ntk_compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image
    assert matplotlib.image.imread(out / "ntk_compare.png").ndim == 3
    return res


def test_cli_end_to_end_tiny_roberta_and_resume(tiny_models, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    rc, stdout, err = _cli(capsys, *_tiny_args(tiny_models["roberta"], out))
    assert rc == 0, err
    res = _check_outputs(out, ["fusion", "prune"])
    assert res["config"]["output"] == "class-prob" and res["config"]["layers"] == [1, 2]
    assert re.search(r"^fusion\s", stdout, re.M) and re.search(r"^prune\s", stdout, re.M)
    # Width 64 -> 16 on two of three layers: MLP params of those layers drop to a quarter (+ b2).
    d, D, k = 32, 64, 16
    fus = res["results"][0]
    assert fus["mlp_params_orig"] == 2 * (2 * d * D + D + d)
    assert fus["mlp_params"] == 2 * (2 * d * k + k + d)
    assert fus["total_params_orig"] - fus["total_params"] == fus["mlp_params_orig"] - fus["mlp_params"]

    # Rerun: everything reused, nothing recomputed (compress would fail if called).
    import ntkfuse.compress as C

    def boom(*a, **k):
        raise AssertionError("compress called on resume")
    monkeypatch.setattr(C, "compress", boom)
    before = (out / "methods" / "fusion__0.json").read_text()   # a random method's row id is (method, seed)
    rc, stdout, err = _cli(capsys, *_tiny_args(tiny_models["roberta"], out))
    assert rc == 0, err
    assert "reused methods: fusion, prune" in stdout
    assert (out / "methods" / "fusion__0.json").read_text() == before
    res2 = json.loads((out / "results.json").read_text())
    assert [r["ntk_rel"] for r in res2["results"]] == [r["ntk_rel"] for r in res["results"]]
    monkeypatch.undo()

    # Adding a method computes only that one.
    rc, stdout, err = _cli(capsys, *_tiny_args(tiny_models["roberta"], out, "fusion,sketch"))
    assert rc == 0, err
    assert "reused methods: fusion)" in stdout
    _check_outputs(out, ["fusion", "sketch"])
    # Changing one method's options recomputes that method only.
    rc, stdout, err = _cli(capsys, *_tiny_args(tiny_models["roberta"], out, "fusion,sketch", "--option",
                                                "sketch.keep=4"))
    assert rc == 0, err
    assert "reused methods: fusion)" in stdout
    assert json.loads((out / "methods" / "sketch__0.json").read_text())["options"] == {"keep": 4}

    # Another seed is no other configuration: its rows join the directory (seeds are row ids).
    rc, stdout, err = _cli(capsys, *_tiny_args(tiny_models["roberta"], out, "prune", "--seed", "1"))
    assert rc == 0 and "reused methods: prune" in stdout, err
    # A different configuration in the same directory is refused (unless --fresh).
    rc, _, err = _cli(capsys, *_tiny_args(tiny_models["roberta"], out, "prune", "--width", "8"))
    assert rc == 2 and "different configuration" in err and "Traceback" not in err
    rc, stdout, err = _cli(capsys, *_tiny_args(tiny_models["roberta"], out, "prune", "--width", "8", "--fresh"))
    assert rc == 0, err
    assert "reused methods: none" in stdout
    assert sorted(p.name for p in (out / "methods").iterdir()) == ["prune.json"]


def test_fusion_and_cluster_share_one_kmeans_identical_to_alone(tiny_models, tmp_path, capsys, monkeypatch):
    """cluster is built from fusion's k-means (METHOD.md §2): a run with both computes it once,
    and cluster's row is exactly what a run of cluster alone gives."""
    import ntkfuse.compress as C
    calls = []
    real = C.kmeans_layers
    monkeypatch.setattr(C, "kmeans_layers", lambda *a, **k: calls.append(1) or real(*a, **k))
    rc, _, err = _cli(capsys, *_tiny_args(tiny_models["roberta"], tmp_path / "both", "fusion,cluster"))
    assert rc == 0, err
    assert len(calls) == 1
    rc, _, err = _cli(capsys, *_tiny_args(tiny_models["roberta"], tmp_path / "alone", "cluster"))
    assert rc == 0, err
    assert len(calls) == 2
    both = json.loads((tmp_path / "both" / "results.json").read_text())["results"]
    alone = json.loads((tmp_path / "alone" / "results.json").read_text())["results"][0]
    assert [r.get("kmeans_reused") for r in both] == [False, True] and alone["kmeans_reused"] is False
    for key in ("out_err_layer", "out_err_logits", "ntk_abs", "ntk_rel", "sign_abs", "sign_rel", "mlp_params"):
        assert both[1][key] == alone[key], key
    # and it is the library's cluster with fusion's key
    import jax
    import ntkfuse
    from ntkfuse.experiments.compare import method_key
    cfg, params, _, _ = ntkfuse.load(str(tiny_models["roberta"]))
    direct = C.compress(cfg, params, "cluster", (1, 2), 16, method_key(0, "fusion"), n_init=1)
    via_fusion = C.compress(cfg, params, "fusion", (1, 2), 16, method_key(0, "fusion"), n_init=1)
    for l in (1, 2):
        counts = np.asarray(via_fusion["layers"][l]["mlp"].counts, np.float32)
        np.testing.assert_allclose(np.asarray(direct["layers"][l]["mlp"].w1),
                                   np.asarray(via_fusion["layers"][l]["mlp"].w1) * np.sqrt(counts)[:, None],
                                   rtol=1e-6)
    assert jax.numpy.array_equal(method_key(3, "cluster"), method_key(3, "fusion"))


def test_cli_end_to_end_tiny_gpt2_webnlg(tiny_models, tmp_path, capsys):
    out = tmp_path / "gpt2"
    rc, stdout, err = _cli(capsys, *_tiny_args(tiny_models["gpt2"], out, "prune,magnitude", "--kernel", "sign",
                                                "--option", "magnitude.sparsity=0.5"))
    assert rc == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["output"] == "target-logprob" and res["data"]["spec"] == "sample:webnlg"
    assert res["config"]["kernel"] == ["sign"]
    assert all("ntk_rel" not in r and r["sign_rel"] >= 0 for r in res["results"])
    mag = res["results"][1]
    assert mag["options"] == {"sparsity": 0.5}
    assert mag["mlp_params"] == mag["mlp_params_orig"]
    assert mag["mlp_nonzero"] < 0.6 * mag["mlp_params"]
    assert (out / "ntk_compare.png").stat().st_size > 1000


def test_recipe_is_overridden_by_flags(tiny_models, tmp_path, capsys):
    recipe = tmp_path / "r.py"
    recipe.write_text("def get_config():\n    return dict(model='minilm', methods='sketch', layers='0', "
                      "width=16, n_examples=6, max_length=16, n_init=1, seed=5)\n")
    out = tmp_path / "rec"
    rc, _, err = _cli(capsys, "--recipe", recipe, "--model", tiny_models["roberta"], "--layers", "1-2", "--out", out)
    assert rc == 0, err
    c = json.loads((out / "results.json").read_text())["config"]
    assert (c["layers"], c["width"], c["seeds"], c["methods"], c["n_examples"]) == ([1, 2], 16, [5], ["sketch"], 6)
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config():\n    return dict(widht=3)\n")
    rc, _, err = _cli(capsys, "--recipe", bad)
    assert rc == 2 and "unknown settings widht" in err


def test_shipped_recipes_parse():
    from ntkfuse.cli import load_recipe
    root = Path(__file__).resolve().parents[2] / "analysis" / "recipes"
    r = load_recipe(root / "roberta_sst2.py")
    assert (r["model"], r["layers"], r["width"], r["data"]) == ("roberta-base", "4-11", 768, "glue/sst2:validation")
    g = load_recipe(root / "gpt2_webnlg.py")
    assert (g["model"], g["layers"], g["width"], g["output"]) == ("gpt2", "4-11", 768, "target-logprob")
    p = load_recipe(root / "protocols.py")
    assert (p["protocols"], p["seeds"]) == ("reference,multi-layer", (0, 1, 2))


def test_render_summarises_runs(tiny_models, tmp_path, capsys):
    import importlib.util
    out = tmp_path / "run"
    assert _cli(capsys, *_tiny_args(tiny_models["roberta"], out, "prune"))[0] == 0
    spec = importlib.util.spec_from_file_location(
        "render", Path(__file__).resolve().parents[2] / "analysis" / "render.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    assert render.main([str(out), str(out), "--out", str(tmp_path / "sum")]) == 0
    md = (tmp_path / "sum" / "summary.md").read_text()
    assert "Side by side" in md and "| prune |" in md
    assert (tmp_path / "sum" / "summary.png").read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------- agreement with the library


def test_minilm_table_entry_equals_direct_library_call(tmp_path, capsys, minilm_dir):
    """The CLI's numbers are the library's: recompute prune's errors with compress + kernels."""
    import jax
    import ntkfuse
    from ntkfuse import compress, ntk
    from ntkfuse.data import make_batch
    out = tmp_path / "minilm"
    rc, stdout, err = _cli(capsys, "--methods", "prune", "--layers", "4-5", "--width", "96", "--n-examples", "4",
                           "--max-length", "16", "--out", out)
    assert rc == 0, err
    row = json.loads((out / "results.json").read_text())["results"][0]

    cfg, params, _, tok = ntkfuse.load("minilm")
    batch = make_batch(cfg, tok, load_examples("sample:sentiment", 4), 16)
    key = jax.random.fold_in(jax.random.PRNGKey(0), compress.METHODS.index("prune"))
    new = compress.compress(cfg, params, "prune", (4, 5), 96, key)
    sel, out_fn = ntk.mlp_layers((4, 5)), ntk.class_prob(0)
    K = ntk.kernels(cfg, params, batch, output=out_fn, selector=sel)
    K2 = ntk.kernels(cfg, new, batch, output=out_fn, selector=sel)
    for kind in ("ntk", "sign"):
        e = ntk.ntk_error(K2[kind], K[kind])
        assert row[f"{kind}_rel"] == pytest.approx(e["rel"], rel=1e-5)
        assert row[f"{kind}_abs"] == pytest.approx(e["abs"], rel=1e-5)
    oe = ntk.output_error(cfg, params, new, [batch], 6)  # hidden state 6 = layer 5's output
    assert row["out_err_layer"] == pytest.approx(oe["layer"], rel=1e-5)
    assert row["out_err_logits"] == pytest.approx(oe["logits"], rel=1e-5)
    assert row["mlp_params"] == 2 * (2 * 384 * 96 + 96 + 384)
    # The printed table shows the same number.
    line = next(l for l in stdout.splitlines() if l.startswith("prune"))
    assert f"{row['sign_rel']:.4g}" in line


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Any compression or kernel call fails the test: bad input must be caught before."""
    import ntkfuse.compress as C
    import ntkfuse.ntk as N

    def boom(*a, **k):
        raise AssertionError("heavy work started before input validation")
    monkeypatch.setattr(C, "compress", boom)
    monkeypatch.setattr(N, "kernels", boom)


@pytest.mark.parametrize("args, message", [
    (["--methods", "fusion,pruning"], r"unknown method pruning; known: fusion, cluster, sketch, prune, magnitude, "
                                      r"svd, mmd"),
    (["--width", "65"], r"width 65 out of range: must be between 1 and the MLP width D = 64"),
    (["--width", "0"], r"width 0 out of range"),
    (["--layers", "1-3"], r"layer 3 out of range: the model has layers 0..2"),
    (["--layers", "x"], r"cannot parse layers 'x'"),
    (["--kernel", "adam"], r"unknown kernel"),
    (["--ntk-params", "some"], r"unknown --ntk-params 'some'; choose from compressed, all-mlps, all"),
    (["--output", "target-logprob"], r"needs a language-model head"),
    (["--n-examples", "0"], r"--n-examples must be a positive integer"),
    (["--option", "sketch.kep=3"], r"unknown option kep for method sketch; valid: keep"),
    (["--reference-protocol", "--layers", "2"], r"--reference-protocol compresses layer 0 only"),
])
def test_bad_arguments_one_line_error(tiny_models, tmp_path, capsys, no_heavy_work, args, message):
    out = tmp_path / "never"
    rc, stdout, err = _cli(capsys, "--model", tiny_models["roberta"], "--out", out, *args)
    assert rc == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("ntk_compare: error: ") and re.search(message, last), last
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("content, message", [
    ("", r"empty file"),
    ("sentence\tlabel\ngood\t1\nbroken line\n", r"line 3: expected 2 columns"),
    (None, r"data file not found"),
])
def test_bad_data_one_line_error(tiny_models, tmp_path, capsys, no_heavy_work, content, message):
    data = tmp_path / "d.tsv"
    if content is not None:
        data.write_text(content)
    rc, _, err = _cli(capsys, "--model", tiny_models["roberta"], "--data", data, "--out", tmp_path / "o")
    assert rc == 2 and re.search(message, err) and "Traceback" not in err
    assert str(data) in err


def test_unloadable_model_one_line_error(tmp_path, capsys, no_heavy_work):
    rc, _, err = _cli(capsys, "--model", tmp_path / "no_such_model", "--out", tmp_path / "o")
    assert rc == 2 and "checkpoint directory not found" in err and "Traceback" not in err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    rc, _, err = _cli(capsys, "--model", tmp_path / "broken", "--out", tmp_path / "o")
    assert rc == 2 and "not valid JSON" in err


def test_reference_protocol_compresses_layer0_only(tiny_models, tmp_path, capsys):
    out = tmp_path / "refp"
    rc, stdout, err = _cli(capsys, "--model", tiny_models["roberta"], "--methods", "prune", "--width", "16",
                           "--n-examples", "6", "--max-length", "16", "--reference-protocol", "--out", out)
    assert rc == 0, err
    res = json.loads((out / "results.json").read_text())
    c, row = res["config"], res["results"][0]
    assert (c["layers"], c["output_layer"], c["ntk_params"]) == ([0], 0, "compressed")
    assert row["mlp_params_orig"] == 2 * 32 * 64 + 64 + 32 and row["mlp_params"] == 2 * 32 * 16 + 16 + 32
    assert "out err L0" in stdout
