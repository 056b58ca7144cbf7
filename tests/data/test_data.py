"""ntkfuse.data: shipped samples, file readers (errors name the line), batching."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ntkfuse.data import (DataError, Example, lm_batch, classification_batch, linearise, load_examples, read_file,
                          read_jsonl, read_table)


# --------------------------------------------------------------------------- shipped samples


def test_sentiment_sample_is_balanced_binary_and_unique():
    ex = load_examples("sample:sentiment")
    assert 95 <= len(ex) <= 110
    labels = [e.label for e in ex]
    assert set(labels) == {0, 1} and abs(labels.count(0) - labels.count(1)) <= 2
    assert len({e.text for e in ex}) == len(ex)
    assert all(e.target is None and e.text for e in ex)


def test_webnlg_sample_linearised_triples_and_targets():
    ex = load_examples("sample:webnlg")
    assert 28 <= len(ex) <= 40
    for e in ex:
        assert e.text.endswith(" =") and " | " in e.text and e.target and e.label is None
    first = json.loads(open(__import__("ntkfuse.data", fromlist=["x"]).sample_path("webnlg")).readline())
    assert ex[0].text == linearise(first["triples"]) and ex[0].target == first["text"]


def test_linearise_format():
    assert linearise([["A", "r", "B"], ["A", "s", "C"]]) == "A | r | B ; A | s | C ="


def test_first_n_and_unknown_sample():
    assert load_examples("sample:sentiment", 5) == load_examples("sample:sentiment")[:5]
    with pytest.raises(DataError, match="sample:sentiment, sample:webnlg"):
        load_examples("sample:nope")
    with pytest.raises(DataError, match=">= 1"):
        load_examples("sample:sentiment", 0)


# --------------------------------------------------------------------------- local files


def test_tsv_csv_jsonl_round_trip(tmp_path):
    (tmp_path / "a.tsv").write_text("label\tsentence\n1\tgood, \"really\" good\n0\tbad\n")
    assert read_file(tmp_path / "a.tsv") == [Example('good, "really" good', 1), Example("bad", 0)]
    (tmp_path / "a.csv").write_text('text,label\n"good, really",1\nbad,0\n')
    assert read_file(tmp_path / "a.csv") == [Example("good, really", 1), Example("bad", 0)]
    (tmp_path / "a.jsonl").write_text('{"sentence": "ok", "label": 1}\n\n'
                                      '{"triples": [["a", "r", "b"]], "text": "a r b."}\n')
    assert read_file(tmp_path / "a.jsonl") == [Example("ok", 1), Example("a | r | b =", None, "a r b.")]
    (tmp_path / "nolabel.tsv").write_text("sentence\nonly text\n")
    assert read_table(tmp_path / "nolabel.tsv") == [Example("only text")]


@pytest.mark.parametrize("name, content, match", [
    ("bad.tsv", "sentence\tlabel\ngood\t1\nno label column here\n", r"line 3: expected 2 columns"),
    ("bad2.tsv", "sentence\tlabel\ngood\t1\nfine\t1\nbad\tpositive\n", r"line 4: label 'positive'"),
    ("bad3.tsv", "sentence\tlabel\n\t1\n", r"line 2: empty 'sentence'"),
    ("hdr.tsv", "words\tlabel\ngood\t1\n", r"line 1: .*no text column"),
    ("hdr.csv", "sentence;label\ngood;1\n", r"line 1: .*comma-separated"),
    ("bad.jsonl", '{"sentence": "a", "label": 1}\n{"sentence": "b", "label": 0\n', r"line 2: not valid JSON"),
    ("bad2.jsonl", '{"sentence": "a", "label": 1}\n{"triples": [["a", "b"]], "text": "x"}\n', r"line 2: 'triples'"),
    ("bad3.jsonl", '{"triples": [["a", "b", "c"]]}\n', r"line 1: missing or empty 'text'"),
    ("bad4.jsonl", '{"words": "a"}\n', r"line 1: expected 'triples'"),
    ("bad5.jsonl", '[1, 2]\n', r"line 1: expected a JSON object"),
    ("empty.tsv", "", r"empty file"),
    ("blank.jsonl", "\n  \n", r"empty file"),
    ("header_only.tsv", "sentence\tlabel\n", r"no examples after the header"),
    ("x.txt", "hello\n", r"unknown file type '.txt'"),
])
def test_bad_files_name_the_line(tmp_path, name, content, match):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(DataError, match=match) as e:
        load_examples(str(p))
    assert str(p) in str(e.value)


def test_missing_file_and_unreadable(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_examples(str(tmp_path / "missing.tsv"))
    (tmp_path / "bin.tsv").write_bytes(b"sentence\tlabel\n\xff\xfe\x00\t1\n")
    with pytest.raises(DataError, match="cannot read"):
        read_table(tmp_path / "bin.tsv")
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(DataError, match="not a file"):
        read_jsonl(tmp_path / "dir.jsonl")


def test_hf_dataset_without_datasets_package_is_a_clear_error(monkeypatch):
    import builtins
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "datasets":
            raise ImportError("no datasets")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(DataError, match=r"needs the `datasets` package"):
        load_examples("glue/sst2")


# --------------------------------------------------------------------------- batching


class _WordTok:
    """Minimal tokenizer: one id per whitespace word (ids from a growing vocabulary)."""
    pad_token_id, eos_token_id = 0, 0

    def __init__(self):
        self.vocab = {}

    def __call__(self, text, add_special_tokens=True, **kw):
        ids = [self.vocab.setdefault(w, len(self.vocab) + 1) for w in text.split()]
        return {"input_ids": ids}


def test_lm_batch_target_mask_covers_exactly_the_target():
    tok = _WordTok()
    ex = [Example("a | r | b =", None, "a is b ."), Example("c | s | d =", None, "d")]
    b = lm_batch(tok, ex, max_length=32)
    assert b["input_ids"].shape == (2, 10)  # 6 prompt words + 4 target words
    np.testing.assert_array_equal(b["attention_mask"], [[1] * 10, [1] * 7 + [0] * 3])
    np.testing.assert_array_equal(b["target_mask"], [[0] * 6 + [1] * 4, [0] * 6 + [1] + [0] * 3])
    ids_t = b["input_ids"][0][b["target_mask"][0] == 1]
    assert ids_t.tolist() == [tok.vocab[w] for w in "a is b .".split()]
    # Too long: the prompt is cut from the left, the target kept.
    b = lm_batch(tok, ex[:1], max_length=6)
    assert b["input_ids"].shape == (1, 6) and b["target_mask"][0].tolist() == [0, 0, 1, 1, 1, 1]
    assert b["input_ids"][0, :2].tolist() == [tok.vocab["b"], tok.vocab["="]]
    # No target: every token after the first is scored.
    b = lm_batch(tok, [Example("x y z")], max_length=8)
    assert b["target_mask"].tolist() == [[0, 1, 1]]


def test_classification_batch_with_bert_tokenizer(minilm_dir):
    from ntkfuse import load_tokenizer
    tok = load_tokenizer(minilm_dir)
    ex = load_examples("sample:sentiment", 4)
    b = classification_batch(tok, ex, max_length=8)
    assert set(b) == {"input_ids", "attention_mask", "token_type_ids"}
    assert b["input_ids"].shape == (4, 8) and b["input_ids"].dtype == np.int32
    assert (b["input_ids"][:, 0] == tok.cls_token_id).all()
