"""Task metrics equal the libraries' own numbers; bad input is an error."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import sacrebleu
import scipy.stats
import sklearn.metrics as skm

from ntkfuse.finetune.metrics import (GLUE_TASKS, KINDS, METEOR_HELP, MetricError, compute_metrics,
                                      generation_metrics, main_metric)

RNG = np.random.default_rng(0)
LABELS = {n: RNG.integers(0, n, 40) for n in (2, 3)}
PREDS = {n: np.where(RNG.random(40) < 0.7, LABELS[n], RNG.integers(0, n, 40)) for n in (2, 3)}
SCORES = RNG.uniform(0, 5, 40)
NOISY = SCORES + RNG.normal(0, 1, 40)

REFERENCE = {  # the libraries called directly
    "accuracy": lambda p, r: skm.accuracy_score(r, p),
    "f1": lambda p, r: skm.f1_score(r, p),
    "f1_macro": lambda p, r: skm.f1_score(r, p, average="macro"),
    "matthews": lambda p, r: skm.matthews_corrcoef(r, p),
    "pearson": lambda p, r: scipy.stats.pearsonr(p, r).statistic,
    "spearman": lambda p, r: scipy.stats.spearmanr(p, r).statistic,
}


def _data(task_or_kind):
    kind = GLUE_TASKS[task_or_kind].kind if task_or_kind in GLUE_TASKS else task_or_kind
    if kind == "regression":
        return NOISY, SCORES
    n = GLUE_TASKS[task_or_kind].num_labels if task_or_kind in GLUE_TASKS else 3
    return PREDS[n], LABELS[n]


@pytest.mark.parametrize("task_or_kind", [*GLUE_TASKS, *KINDS])
def test_compute_metrics_equal_library(task_or_kind):
    pred, ref = _data(task_or_kind)
    got = compute_metrics(task_or_kind, pred, ref)
    names = GLUE_TASKS[task_or_kind].metrics if task_or_kind in GLUE_TASKS else KINDS[task_or_kind]
    assert set(got) == set(names)
    for name in names:
        assert got[name] == pytest.approx(REFERENCE[name](pred, ref), rel=1e-12, abs=1e-12), name
    if task_or_kind in GLUE_TASKS:
        assert main_metric(task_or_kind) in got
        assert compute_metrics(f"glue/{task_or_kind}", pred, ref) == got
        assert main_metric(f"glue/{task_or_kind}") == main_metric(task_or_kind)


def test_scores_are_argmaxed():
    logits = np.eye(3)[PREDS[3]] + 0.1
    assert compute_metrics("mnli", logits, LABELS[3]) == compute_metrics("mnli", PREDS[3], LABELS[3])


def test_glue_table():
    assert {"sst2", "mnli", "mrpc", "cola", "stsb", "qnli", "qqp", "rte"} <= set(GLUE_TASKS)
    assert [main_metric(t) for t in ("mrpc", "qqp", "cola", "stsb")] == ["f1", "f1", "matthews", "pearson"]
    assert GLUE_TASKS["mnli"].text_columns == ("premise", "hypothesis") and GLUE_TASKS["mnli"].num_labels == 3
    assert GLUE_TASKS["qnli"].text_columns == ("question", "sentence")
    assert GLUE_TASKS["stsb"].kind == "regression" and GLUE_TASKS["stsb"].num_labels == 1


@pytest.mark.parametrize("args, match", [
    (("sst2", [1, 0], [1]), "2 predictions but 1"),
    (("sst2", [], []), "no predictions"),
    (("sst2", [0.5, 1.0], [0, 1]), "integer labels"),
    (("stsb", [1.0], [1.0]), "at least 2"),
    (("stsb", [1.0, np.nan], [1.0, 2.0]), "finite"),
    (("squad", [1], [1]), "unknown task"),
])
def test_compute_metrics_bad_input(args, match):
    with pytest.raises(MetricError, match=match):
        compute_metrics(*args)
    if args[0] in GLUE_TASKS:
        return
    with pytest.raises(MetricError, match="unknown GLUE task"):
        main_metric(args[0])


HYPS = ["the cat sat on the mat", "a quick brown fox jumps", "Alan Bean was born in Wheeler , Texas ."]
REFS = [["the cat sat on a mat", "a cat was sitting on the mat"], "the quick brown fox jumped",
        ["Alan Bean was born in Wheeler, Texas.", "Wheeler , Texas is where Alan Bean was born .",
         "Alan Bean is from Wheeler ."]]


def test_generation_metrics_equal_sacrebleu():
    streams = [[REFS[0][0], REFS[1], REFS[2][0]], [REFS[0][1], None, REFS[2][1]], [None, None, REFS[2][2]]]
    got = generation_metrics(HYPS, REFS, meteor=False)
    assert got["bleu"] == sacrebleu.corpus_bleu(HYPS, streams).score
    assert got["ter"] == sacrebleu.corpus_ter(HYPS, streams).score
    assert got["meteor"] is None
    # Several references matter: scoring against the first only gives another BLEU.
    assert generation_metrics(HYPS, [r if isinstance(r, str) else r[0] for r in REFS], meteor=False)["bleu"] \
        != got["bleu"]


def test_meteor_missing_is_none_with_help(monkeypatch):
    monkeypatch.setitem(sys.modules, "nltk", None)   # import nltk -> ImportError
    monkeypatch.setitem(sys.modules, "nltk.corpus", None)
    with pytest.warns(UserWarning, match="pip install nltk"):
        got = generation_metrics(HYPS, REFS)
    assert got["meteor"] is None and "nltk.downloader wordnet" in METEOR_HELP


def test_meteor_equals_nltk():
    nltk = pytest.importorskip("nltk")
    try:
        nltk.corpus.wordnet.ensure_loaded()
    except LookupError:
        pytest.skip("nltk's WordNet data is not installed")
    from nltk.translate.meteor_score import meteor_score
    refs = [[r] if isinstance(r, str) else r for r in REFS]
    want = np.mean([meteor_score([x.split() for x in r], h.split()) for h, r in zip(HYPS, refs)])
    assert generation_metrics(HYPS, REFS)["meteor"] == pytest.approx(want)


@pytest.mark.parametrize("hyps, refs, match", [
    (HYPS, REFS[:2], "3 hypotheses but 2"),
    ([], [], "no hypotheses"),
    ("a b", ["a b"], "sequences"),
    (["a b"], [[]], "one or more reference"),
    ([None], ["a"], "not a string"),
])
def test_generation_metrics_bad_input(hyps, refs, match):
    with pytest.raises(MetricError, match=match):
        generation_metrics(hyps, refs)
