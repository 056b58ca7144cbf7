"""Task metrics, computed by the established libraries (never re-implemented here):
scikit-learn (accuracy, F1, Matthews correlation), scipy (Pearson, Spearman), sacrebleu
(corpus BLEU and TER, several references per example) and nltk (METEOR, optional).

`GLUE_TASKS` says, per GLUE task, how to read it through HF `datasets` ("glue", task)
and how to score it; `compute_metrics(task_or_kind, predictions, references)` scores
classification/regression outputs, `generation_metrics(hypotheses, references)` text.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, Optional, Sequence, Union

import numpy as np


class MetricError(ValueError):
    """Bad input to a metric (raised before any score is computed)."""


@dataclasses.dataclass(frozen=True)
class GlueTask:
    """How a GLUE task is read and scored. `text_columns`: one or two sentence columns of
    `datasets.load_dataset("glue", name)`; the label column is "label" (a float score for
    stsb); `validation_split`: the split the GLUE dev results are reported on."""
    name: str
    kind: str                     # "classification" | "regression"
    num_labels: int               # 1 for regression
    text_columns: tuple
    metrics: tuple
    main_metric: str
    validation_split: str = "validation"
    label_column: str = "label"


GLUE_TASKS = {t.name: t for t in (
    GlueTask("cola", "classification", 2, ("sentence",), ("matthews", "accuracy"), "matthews"),
    GlueTask("sst2", "classification", 2, ("sentence",), ("accuracy",), "accuracy"),
    GlueTask("mrpc", "classification", 2, ("sentence1", "sentence2"), ("f1", "accuracy"), "f1"),
    GlueTask("qqp", "classification", 2, ("question1", "question2"), ("f1", "accuracy"), "f1"),
    GlueTask("stsb", "regression", 1, ("sentence1", "sentence2"), ("pearson", "spearman"), "pearson"),
    GlueTask("mnli", "classification", 3, ("premise", "hypothesis"), ("accuracy",), "accuracy",
             validation_split="validation_matched"),
    GlueTask("qnli", "classification", 2, ("question", "sentence"), ("accuracy",), "accuracy"),
    GlueTask("rte", "classification", 2, ("sentence1", "sentence2"), ("accuracy",), "accuracy"),
    GlueTask("wnli", "classification", 2, ("sentence1", "sentence2"), ("accuracy",), "accuracy"),
)}

# Metric sets of the generic kinds (a task not in GLUE_TASKS).
KINDS = {"classification": ("accuracy", "f1_macro"), "regression": ("pearson", "spearman")}


def _sk(name: str) -> Callable:
    def score(pred, ref):
        import sklearn.metrics as skm
        if name == "accuracy":
            return skm.accuracy_score(ref, pred)
        if name == "f1":          # binary F1 of the positive class 1, as GLUE scores MRPC and QQP
            return skm.f1_score(ref, pred, average="binary", pos_label=1)
        if name == "f1_macro":
            return skm.f1_score(ref, pred, average="macro")
        return skm.matthews_corrcoef(ref, pred)
    return score


def _sp(name: str) -> Callable:
    def score(pred, ref):
        import scipy.stats
        fn = scipy.stats.pearsonr if name == "pearson" else scipy.stats.spearmanr
        return fn(pred, ref)[0]
    return score


METRICS = {"accuracy": _sk("accuracy"), "f1": _sk("f1"), "f1_macro": _sk("f1_macro"),
           "matthews": _sk("matthews"), "pearson": _sp("pearson"), "spearman": _sp("spearman")}
_REGRESSION = ("pearson", "spearman")


def _glue_name(name: str) -> str:
    """"glue/cola" (the fine-tuning task name) and "cola" are the same task."""
    return name[5:] if isinstance(name, str) and name.startswith("glue/") else name


def _task(task: str) -> GlueTask:
    task = _glue_name(task)
    if task not in GLUE_TASKS:
        raise MetricError(f"unknown GLUE task {task!r}; known: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[task]


def main_metric(task: str) -> str:
    """The metric a GLUE task ("cola" or "glue/cola") is ranked by: f1 for mrpc/qqp, matthews
    for cola, pearson for stsb, accuracy otherwise."""
    return _task(task).main_metric


def _plan(task_or_kind: str) -> tuple[str, tuple]:
    task_or_kind = _glue_name(task_or_kind)
    if task_or_kind in KINDS:
        return task_or_kind, KINDS[task_or_kind]
    if task_or_kind in GLUE_TASKS:
        t = GLUE_TASKS[task_or_kind]
        return t.kind, t.metrics
    raise MetricError(f"unknown task or kind {task_or_kind!r}; known: {', '.join((*KINDS, *GLUE_TASKS))}")


def _as_predictions(kind: str, predictions, references) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(predictions), np.asarray(references)
    if kind == "classification" and pred.ndim == 2:      # logits / probabilities -> labels
        pred = pred.argmax(-1)
    if kind == "regression" and pred.ndim == 2 and pred.shape[1] == 1:
        pred = pred[:, 0]
    if pred.ndim != 1 or ref.ndim != 1:
        raise MetricError(f"predictions {pred.shape} and references {ref.shape} must be 1-D "
                          "(classification predictions may be (N, classes) scores)")
    if len(pred) != len(ref):
        raise MetricError(f"{len(pred)} predictions but {len(ref)} references")
    if len(pred) == 0:
        raise MetricError("no predictions to score")
    if kind == "classification":
        for name, a in (("predictions", pred), ("references", ref)):
            if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.bool_)):
                raise MetricError(f"classification {name} must be integer labels, got dtype {a.dtype}")
    else:
        pred, ref = pred.astype(np.float64), ref.astype(np.float64)
        if not (np.isfinite(pred).all() and np.isfinite(ref).all()):
            raise MetricError("regression predictions and references must be finite")
    return pred, ref


def compute_metrics(task_or_kind: str, predictions, references) -> dict:
    """{metric: float} for a GLUE task name ("cola" or "glue/cola"; its metrics, see GLUE_TASKS) or a kind
    ("classification": accuracy, macro F1; "regression": Pearson, Spearman).
    Classification predictions are labels (N,) or scores (N, classes), argmax taken."""
    kind, names = _plan(task_or_kind)
    pred, ref = _as_predictions(kind, predictions, references)
    if kind == "regression" and len(pred) < 2:
        raise MetricError("correlations need at least 2 predictions")
    return {name: float(METRICS[name](pred, ref)) for name in names}


# ----------------------------------------------------------------------------- generation

METEOR_HELP = ("METEOR needs nltk and its WordNet data: `pip install nltk` and "
               "`python -m nltk.downloader wordnet`; reported as None until then")


def _meteor_scorer() -> Optional[Callable]:
    """nltk's sentence METEOR, or None (with a warning naming what to install)."""
    try:
        from nltk.corpus import wordnet
        from nltk.translate.meteor_score import meteor_score
        wordnet.ensure_loaded()
    except (ImportError, LookupError) as e:
        warnings.warn(f"{METEOR_HELP} ({type(e).__name__}: {str(e).strip().splitlines()[0]})", stacklevel=3)
        return None
    return meteor_score


References = Sequence[Union[str, Sequence[str]]]


def _reference_lists(hypotheses: Sequence[str], references: References) -> list[list[str]]:
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise MetricError("hypotheses and references must be sequences, one entry per example")
    if len(hypotheses) != len(references):
        raise MetricError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        raise MetricError("no hypotheses to score")
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    for i, (h, r) in enumerate(zip(hypotheses, refs)):
        if not isinstance(h, str):
            raise MetricError(f"hypothesis {i} is not a string: {type(h).__name__}")
        if not r or not all(isinstance(x, str) for x in r):
            raise MetricError(f"example {i} needs one or more reference strings")
    return refs


def generation_metrics(hypotheses: Sequence[str], references: References, *, meteor: bool = True) -> dict:
    """Corpus BLEU and TER (sacrebleu, 0-100, default 13a tokenisation) and METEOR (nltk,
    the mean sentence score over whitespace tokens, 0-1) of `hypotheses` against
    `references`: per example one string or a list of strings (WebNLG has several).
    METEOR is None when nltk or its WordNet data is missing (a warning says what to
    install), or when `meteor=False`."""
    import sacrebleu
    refs = _reference_lists(hypotheses, references)
    # sacrebleu takes reference streams; None fills the examples with fewer references.
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(max(map(len, refs)))]
    hyps = list(hypotheses)
    out = {"bleu": float(sacrebleu.corpus_bleu(hyps, streams).score),
           "ter": float(sacrebleu.corpus_ter(hyps, streams).score), "meteor": None}
    scorer = _meteor_scorer() if meteor else None
    if scorer is not None:
        scores = [scorer([x.split() for x in r], h.split()) for h, r in zip(hyps, refs)]
        out["meteor"] = float(np.mean(scores))
    return out
