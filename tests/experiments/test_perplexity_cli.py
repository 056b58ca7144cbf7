"""scripts/perplexity.py (ntkfuse.cli.perplexity_main, ntkfuse.experiments.perplexity): end to
end on a tiny random GPT-2 checkpoint with one compression method and on a tiny random Switch
(encoder-decoder) with fusion and pruning, agreement of the full model's row with the library
function, resume, and bad input (one line, exit status 2)."""
from __future__ import annotations

import csv
import json
import runpy
import sys
from pathlib import Path

import pytest

import ntkfuse
from ntkfuse.cli import perplexity_main
from ntkfuse.data import load_examples, tokenize_text
from ntkfuse.eval import sliding_window_nll

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """The shipped sentiment sentences (words the tiny tokenizer knows), one per line."""
    p = tmp_path_factory.mktemp("text") / "sentiment.txt"
    p.write_text("\n".join(e.text for e in load_examples("sample:sentiment")) + "\n")
    return p


def _cli(capsys, *args):
    rc = perplexity_main([str(a) for a in args] + ["--no-progress", "--no-compile-cache"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _assert_full_row_is_the_library(full: dict, model, text_file):
    """The full model's row is the library function on the same model and text (--max-length 24,
    --stride 8, --batch-size 4): every token after the first scored once. Returns the config."""
    cfg, params, _, tok = ntkfuse.load(model)
    ids = tokenize_text(tok, text_file.read_text())
    lib = sliding_window_nll(cfg, params, ids, 24, 8, batch_size=4)
    assert full["perplexity"] == pytest.approx(lib.perplexity, rel=1e-9)
    assert (full["tokens"], full["n_tokens"], full["windows"]) == (lib.tokens, len(ids), lib.windows)
    assert lib.tokens == len(ids) - 1
    return cfg


def test_end_to_end_with_prune(capsys, tiny_models, text_file, tmp_path):
    model, out = tiny_models["gpt2"], tmp_path / "ppl"
    args = ["--model", model, "--text", text_file, "--max-length", "24", "--stride", "8", "--batch-size", "4",
            "--methods", "prune", "--layers", "1-2", "--width", "32", "--out", out]
    rc, stdout, err = _cli(capsys, *args)
    assert rc == 0, err
    for name in ("results.json", "results.csv", "results.md", "run.json"):
        assert (out / name).is_file()
    res = json.loads((out / "results.json").read_text())
    full, prune = res["rows"]
    assert (full["method"], prune["method"]) == ("full", "prune")
    assert res["config"]["layers"] == [1, 2] and res["config"]["width"] == 32
    assert prune["params"] < full["params"] and prune["perplexity"] != full["perplexity"]
    _assert_full_row_is_the_library(full, model, text_file)
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["full", "prune"]
    assert float(rows[0]["perplexity"]) == pytest.approx(full["perplexity"], rel=1e-12)
    md = (out / "results.md").read_text()
    assert "| prune |" in md and "token-weighted" in md
    assert "perplexity" in stdout and "prune" in stdout and f"{full['perplexity']:.4f}" in stdout
    # a rerun reuses both rows
    rc, _, err = _cli(capsys, *args)
    assert rc == 0 and "reused 2 finished row(s)" in err


@pytest.mark.parametrize("extra,match", [
    (["--stride", "0"], "stride must be a positive integer"),
    (["--max-length", "8", "--stride", "9"], "stride 9 exceeds max_length 8"),
    (["--max-length", "65"], "exceeds the model's 64 positions"),
    (["--methods", "nope"], "unknown method nope"),
    (["--methods", "prune", "--layers", "7"], "out of range"),
    (["--methods", "prune", "--width", "0"], "width 0 out of range"),
])
def test_bad_settings_exit_2(capsys, tiny_models, text_file, extra, match):
    rc, _, err = _cli(capsys, "--model", tiny_models["gpt2"], "--text", text_file, "--out", "/nonexistent/never",
                      *extra)
    lines = err.strip().splitlines()
    assert rc == 2 and lines[-1].startswith("perplexity.py: error:") and match in lines[-1], err


def test_bad_text_and_encoder_exit_2(capsys, tiny_models, text_file, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    # the text is read before the model is loaded: a missing model does not mask it
    rc, _, err = _cli(capsys, "--model", tmp_path / "no-model", "--text", empty)
    assert rc == 2 and "empty file" in err
    rc, _, err = _cli(capsys, "--model", tmp_path / "no-model", "--text", tmp_path / "missing.txt")
    assert rc == 2 and "not found" in err
    one = tmp_path / "one.txt"
    one.write_text("film\n")
    rc, _, err = _cli(capsys, "--model", tiny_models["gpt2"], "--text", one, "--out", tmp_path / "o")
    assert rc == 2 and "needs at least 2" in err
    rc, _, err = _cli(capsys, "--model", tiny_models["roberta"], "--text", text_file, "--out", tmp_path / "o")
    assert rc == 2 and "needs a decoder language model" in err and "encoder" in err


@pytest.fixture(scope="module")
def tiny_switch(tmp_path_factory):
    """A tiny SwitchTransformersForConditionalGeneration (2 + 2 layers, 4 experts) with a word tokenizer."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tests.experiments.conftest import _tokenizer
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("switch")
    V = _tokenizer("switch", d)
    from tests.models.test_switch import BASE   # the Switch parity tests' tiny config
    cfg = transformers.SwitchTransformersConfig(**{**BASE, "vocab_size": V})
    transformers.SwitchTransformersForConditionalGeneration(cfg).save_pretrained(d)
    return d


def test_encoder_decoder_end_to_end(capsys, tiny_switch, text_file, tmp_path):
    """Switch (an encoder-decoder) through the CLI: the full model and two compressed ones (fusion and
    pruning, expert-wise in the sparse layers 1 and 3, as dense MLPs in 0 and 2), the result files, the
    full row equal to the library function, every token but the first scored, and resume."""
    out = tmp_path / "ppl"
    args = ["--model", tiny_switch, "--text", text_file, "--max-length", "24", "--stride", "8", "--batch-size", "4",
            "--methods", "fusion,prune", "--n-init", "1", "--layers", "0-3", "--width", "32", "--out", out]
    rc, stdout, err = _cli(capsys, *args)
    assert rc == 0, err
    for name in ("results.json", "results.csv", "results.md", "run.json"):
        assert (out / name).is_file()
    res = json.loads((out / "results.json").read_text())
    full, fusion, prune = res["rows"]
    assert [r["method"] for r in res["rows"]] == ["full", "fusion", "prune"]
    for row in (fusion, prune):
        assert row["params"] < full["params"] and row["perplexity"] != full["perplexity"]
        assert row["tokens"] == full["tokens"] and row["windows"] == full["windows"]
    assert _assert_full_row_is_the_library(full, tiny_switch, text_file).is_encoder_decoder
    with open(out / "results.csv") as f:
        assert [r["method"] for r in csv.DictReader(f)] == ["full", "fusion", "prune"]
    assert "| fusion |" in (out / "results.md").read_text() and "fusion" in stdout
    rc, _, err = _cli(capsys, *args)
    assert rc == 0 and "reused 3 finished row(s)" in err


def test_script_is_a_thin_entry_point(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["perplexity.py", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "scripts" / "perplexity.py"), run_name="__main__")
    assert e.value.code == 0 and "--stride" in capsys.readouterr().out
