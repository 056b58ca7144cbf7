"""Task registry: GLUE kinds and metrics, WebNLG rows, local kinds, head checks."""
from __future__ import annotations

import pytest

from ntkfuse.data import DataError, Example
from ntkfuse.finetune import FinetuneError, check_head, get_task
from ntkfuse.finetune.tasks import webnlg_record
from tests.finetune.helpers import tiny


@pytest.mark.parametrize("name, kind, n, metric, dev", [
    ("glue/sst2", "classification", 2, "accuracy", "glue/sst2:validation"),
    ("glue/cola", "classification", 2, "matthews", "glue/cola:validation"),
    ("glue/mrpc", "classification", 2, "f1", "glue/mrpc:validation"),
    ("glue/stsb", "regression", 1, "pearson", "glue/stsb:validation"),
    ("glue/mnli", "classification", 3, "accuracy", "glue/mnli:validation_matched"),
])
def test_glue_tasks(name, kind, n, metric, dev):
    t = get_task(name)
    assert (t.kind, t.num_labels, t.metric, t.train, t.dev) == (kind, n, metric, f"{name}:train", dev)
    assert t.label_type == ("score" if kind == "regression" else "class")


def test_local_kinds_and_overrides():
    t = get_task("regression", train="a.tsv", dev="b.tsv")
    assert (t.kind, t.num_labels, t.train, t.dev, t.label_type) == ("regression", 1, "a.tsv", "b.tsv", "score")
    assert get_task("glue/sst2", dev="mine.tsv").dev == "mine.tsv"
    g = get_task("generation", train="x.jsonl")
    assert g.lower_is_better and g.metric == "loss"


def test_webnlg_record():
    row = {"modified_triple_sets": {"mtriple_set": [["Alan_Bean | occupation | Test_pilot",
                                                     "Alan_Bean | birthPlace | Texas"]]},
           "lex": {"text": ["Alan Bean, born in Texas, was a test pilot.", "Another reference."]}}
    assert webnlg_record(row, "row 0") == Example(
        "Alan_Bean | occupation | Test_pilot ; Alan_Bean | birthPlace | Texas =", None,
        "Alan Bean, born in Texas, was a test pilot.")
    with pytest.raises(DataError, match="row 3: not a web_nlg row"):
        webnlg_record({"text": "x"}, "row 3")


def test_check_head():
    cfg, _ = tiny()
    check_head(cfg, get_task("glue/sst2"))
    with pytest.raises(FinetuneError, match="regression: it needs a head with one output"):
        check_head(cfg, get_task("glue/stsb"))
    check_head(tiny(num_labels=1)[0], get_task("glue/stsb"))
    with pytest.raises(FinetuneError, match="classification: the model's head has 1 output"):
        check_head(tiny(num_labels=1)[0], get_task("glue/sst2"))
    with pytest.raises(FinetuneError, match="needs a classifier head"):
        check_head(tiny("gpt2")[0], get_task("glue/sst2"))
    check_head(tiny("gpt2")[0], get_task("sample:webnlg"))
