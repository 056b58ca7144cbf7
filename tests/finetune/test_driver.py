"""The fine-tuning driver: table over methods × lr × seed, reports, resume after an
interruption without losing finished rows, and bad input before any training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ntkfuse.checkpoints import Loaded
from ntkfuse.cli import finetune_main
from ntkfuse.experiments import finetune as F
from ntkfuse.finetune import FinetuneError
from tests.finetune.helpers import WordTok, sentiment, tiny


def _tsv(path: Path, examples, label=True) -> str:
    lines = ["sentence\tlabel" if label else "sentence"]
    lines += [f"{e.text}\t{e.label}" if label else e.text for e in examples]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _loaded(num_labels=2):
    cfg, p = tiny(num_labels=num_labels)
    return Loaded(cfg, p, Path("tiny"), WordTok())


def _config(tmp_path, **kw):
    base = dict(model="tiny", task="classification", train=_tsv(tmp_path / "train.tsv", sentiment(24)),
                dev=_tsv(tmp_path / "dev.tsv", sentiment(8, seed=1)), methods=("fusion", "prune"), layers="1",
                width=8, lrs=(2e-2, 1e-2), epochs=2, batch_size=8, max_length=16, n_init=1)
    base.update(kw)
    return F.FinetuneRunConfig(**base)


def test_run_writes_the_table_and_resumes_without_losing_rows(tmp_path, monkeypatch):
    plan = F.prepare(_config(tmp_path), loaded=_loaded())
    assert plan.methods == ("full", "fusion", "prune") and plan.layers == (1,) and plan.width == 8
    out = tmp_path / "out"
    real, calls = F.run_row, []

    def interrupted(plan, method, lr, seed, *a, **k):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append((method, lr))
        return real(plan, method, lr, seed, *a, **k)
    monkeypatch.setattr(F, "run_row", interrupted)
    with pytest.raises(KeyboardInterrupt):
        F.run(plan, out, progress=False)
    assert len(list((out / "rows").glob("*.json"))) == 3
    monkeypatch.setattr(F, "run_row", lambda *a, **k: calls.append(a[1:3]) or real(*a, **k))
    result = F.run(plan, out, progress=False)
    assert calls[3:] == [("fusion", 1e-2), ("prune", 2e-2), ("prune", 1e-2)]   # finished rows reused
    assert len(result["reused"]) == 3 and len(result["rows"]) == 6
    again = F.run(plan, out, progress=False)
    assert len(again["reused"]) == 6 and [r["value"] for r in again["rows"]] == [r["value"] for r in result["rows"]]
    s = {r["method"]: r for r in result["summary"]}
    assert list(s) == ["full", "fusion", "prune"]
    assert s["fusion"]["params"] < s["full"]["params"]
    for m, r in s.items():   # the picked lr has the best dev metric among the method's rows
        assert r["value"] == max(x["value"] for x in result["rows"] if x["method"] == m)
    files = F.write_reports(result, out)
    assert all(Path(f).is_file() for f in files.values())
    md = files["md"].read_text()
    assert "| full |" in md and "| fusion |" in md and "dev accuracy" in md
    assert json.loads(files["json"].read_text())["config"]["metric"] == "accuracy"
    assert not (out / "ckpt").exists() or not any((out / "ckpt").iterdir())   # finished rows drop checkpoints


@pytest.mark.parametrize("change, match", [
    (dict(task="glue/nope"), r"unknown task 'glue/nope'"),
    (dict(lrs=(1e-4, 0.0)), r"learning rate \(lr\) must be a positive number, got 0.0"),
    (dict(lrs=(-1e-4,)), r"learning rate \(lr\) must be a positive"),
    (dict(methods=("fusion", "kmeans")), r"unknown method kmeans"),
    (dict(task="regression"), r"regression: it needs a head with one output"),
    (dict(layers="7"), r"layer 7 out of range"),
    (dict(width=1000), r"width 1000 out of range"),
])
def test_prepare_refuses_bad_settings(tmp_path, change, match):
    with pytest.raises(FinetuneError, match=match):
        F.prepare(_config(tmp_path, **change), loaded=_loaded())


def test_prepare_refuses_bad_data(tmp_path):
    nolabel = _tsv(tmp_path / "nolabel.tsv", sentiment(8), label=False)
    with pytest.raises(FinetuneError, match="have no label"):
        F.prepare(_config(tmp_path, train=nolabel), loaded=_loaded())
    three = tmp_path / "three.tsv"
    three.write_text("sentence\tlabel\na\t0\nb\t2\n")
    with pytest.raises(FinetuneError, match=r"label 2 outside the head's classes 0..1"):
        F.prepare(_config(tmp_path, dev=str(three)), loaded=_loaded())
    with pytest.raises(FinetuneError, match="leaves an empty dev split"):
        F.prepare(_config(tmp_path, dev=None, dev_fraction=0.01), loaded=_loaded())


@pytest.mark.parametrize("argv, match", [
    (["--task", "glue/nope"], "unknown task 'glue/nope'"),
    (["--lrs", "0"], r"learning rate \(lr\) must be a positive number"),
    (["--lrs", "fast"], "cannot parse the learning rates"),
    (["--task", "classification"], "--train"),
    (["--epochs", "0"], "epochs must be a positive integer"),
    (["--compute-dtype", "float16"], "unknown compute_dtype 'float16'; choose from float32, bfloat16"),
    (["--remat", "all"], "unknown remat 'all'; choose from none, dots, layer"),
])
def test_cli_bad_input_is_one_line_exit_2(capsys, argv, match):
    import re
    assert finetune_main(argv + ["--no-progress", "--out", "/nonexistent/never"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("finetune.py: error: ") and re.search(match, err[0])


def test_summary_picks_best_lr_and_marks_inherited_memory_peaks():
    from ntkfuse.finetune import get_task

    def row(method, lr, seed, value, peak, own):
        return dict(method=method, lr=lr, seed=seed, value=value, best={"accuracy": value}, params=10,
                    mlp_params=5, best_epoch=1, peak_memory_bytes=peak, peak_memory_own=own, train_s=1.0,
                    time_s=2.0)
    rows = [row("full", 1e-4, 0, 0.9, 3 * 2**30, True), row("full", 1e-4, 1, 0.8, 3 * 2**30, False),
            row("full", 3e-4, 0, 0.95, 3 * 2**30, False), row("full", 3e-4, 1, 0.6, 3 * 2**30, False),
            row("fusion", 1e-4, 0, 0.7, 2 * 2**30, False)]
    s = F.summary(get_task("sample:sentiment"), rows)
    assert s[0]["lr"] == 1e-4 and s[0]["value"] == pytest.approx(0.85) and s[0]["std"] == pytest.approx(0.05)
    head, cells = F.table_rows({"summary": s, "config": {"metric": "accuracy"}})
    mem = head.index("peak memory")
    assert cells[0][mem] == "≤ 3.00 GB" and cells[1][mem] == "≤ 2.00 GB"   # a seed stayed below an earlier peak
    assert cells[0][head.index("dev accuracy")] == "0.8500 ± 0.0500"
    s = F.summary(get_task("sample:sentiment"), rows[:1])
    assert F.table_rows({"summary": s, "config": {"metric": "accuracy"}})[1][0][mem] == "3.00 GB"
