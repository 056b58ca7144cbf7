"""Readers for fine-tuning data: sentence pairs, float labels (regression), label checks."""
from __future__ import annotations

import pytest

from ntkfuse.data import DataError, Example, check_labels, load_examples, read_jsonl, read_table


@pytest.mark.parametrize("first, second", [("sentence1", "sentence2"), ("question", "sentence"),
                                           ("question1", "question2"), ("premise", "hypothesis")])
def test_pair_columns_tsv(tmp_path, first, second):
    p = tmp_path / "pairs.tsv"
    p.write_text(f"{first}\t{second}\tlabel\nA cat sat.\tA cat was sitting.\t1\nIt rains.\tThe sun shines.\t0\n")
    assert read_table(p) == [Example("A cat sat.", 1, None, "A cat was sitting."),
                             Example("It rains.", 0, None, "The sun shines.")]


def test_pair_jsonl_and_csv_scores(tmp_path):
    p = tmp_path / "sts.jsonl"
    p.write_text('{"sentence1": "a", "sentence2": "b", "label": 3.8}\n'
                 '{"sentence1": "c", "sentence2": "d", "label": 1}\n')
    ex = read_jsonl(p, label_type="score")
    assert ex == [Example("a", 3.8, None, "b"), Example("c", 1.0, None, "d")]
    assert isinstance(ex[1].label, float)
    c = tmp_path / "sts.csv"
    c.write_text('sentence1,sentence2,label\n"x, y",z,4.25\n')
    assert load_examples(str(c), label_type="score") == [Example("x, y", 4.25, None, "z")]


def test_score_labels_refused_as_classes_and_bad_scores(tmp_path):
    p = tmp_path / "sts.tsv"
    p.write_text("sentence1\tsentence2\tlabel\na\tb\t3.8\n")
    with pytest.raises(DataError, match=r"line 2: label '3.8' is not an integer class index"):
        read_table(p)
    p.write_text("sentence1\tsentence2\tlabel\na\tb\tsimilar\n")
    with pytest.raises(DataError, match=r"line 2: label 'similar' is not a number"):
        read_table(p, label_type="score")
    p.write_text("sentence1\tsentence2\tlabel\na\t\t1\n")
    with pytest.raises(DataError, match=r"line 2: empty 'sentence2'"):
        read_table(p)
    with pytest.raises(DataError, match=r"unknown label type 'float'"):
        read_table(p, label_type="float")


def test_single_sentence_files_unchanged(tmp_path):
    p = tmp_path / "a.tsv"
    p.write_text("sentence\tlabel\ngood\t1\n")
    assert read_table(p) == [Example("good", 1)] and read_table(p)[0].text_pair is None


def test_check_labels():
    ex = [Example("a", 0), Example("b", 1)]
    check_labels(ex, "class", 2)
    with pytest.raises(DataError, match=r"train: label 2 outside the head's classes 0..1"):
        check_labels(ex + [Example("c", 2)], "class", 2, where="train")
    with pytest.raises(DataError, match=r"1 of 3 examples have no label .* 'label' column"):
        check_labels(ex + [Example("c")], "class", 2)
    with pytest.raises(DataError, match=r"not an integer class index"):
        check_labels([Example("a", 0.5)], "class", 2)
    check_labels([Example("a", 0.5), Example("b", 4.0)], "score")
    with pytest.raises(DataError, match="no examples"):
        check_labels([], "class", 2)


def test_classification_batch_encodes_sentence_pairs(minilm_dir):
    """ntk_compare's batches keep the second sentence of pair data (as the tokenizer's pair encoding)."""
    import numpy as np

    from ntkfuse.checkpoints import load_tokenizer
    from ntkfuse.data.batching import classification_batch
    tok = load_tokenizer(minilm_dir)
    ex = [Example("a cat sat", label=1, text_pair="on the mat"), Example("dogs run", label=0, text_pair="fast")]
    b = classification_batch(tok, ex, 32)
    want = tok(["a cat sat", "dogs run"], ["on the mat", "fast"], padding="longest", return_tensors="np")
    np.testing.assert_array_equal(b["input_ids"], want["input_ids"])
    assert b["token_type_ids"].max() == 1   # the second segment is marked
    with pytest.raises(DataError, match="second sentence"):
        classification_batch(tok, [ex[0], Example("no pair", label=0)], 32)
