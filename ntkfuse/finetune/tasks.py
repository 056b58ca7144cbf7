"""Fine-tuning tasks: what is learnt (classification, regression, generation), from
which data, and which dev metric picks the best epoch.

A task is a frozen dataclass; `get_task(name)` knows the GLUE tasks (`glue/<task>`),
WebNLG (`webnlg`, the 2017 challenge through HF datasets), the shipped samples
(`sample:sentiment`, `sample:webnlg`) and the three kinds for local files
(`classification`, `regression`, `generation`, with `train=`/`dev=` file paths).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from ..data import DataError, Example

KINDS = ("classification", "regression", "generation")


class FinetuneError(ValueError):
    """Bad fine-tuning settings or data (raised before any training)."""


@dataclasses.dataclass(frozen=True)
class Task:
    """`kind`: classification | regression | generation. `num_labels`: the head's outputs
    (classes; 1 for regression; 0 for generation, which uses the LM head). `metric`: the
    dev metric that selects the best epoch (higher is better unless `lower_is_better`).
    `train`/`dev`: data specs as `ntkfuse.data.load_examples` reads them; dev None means
    "hold out `dev_fraction` of train"."""
    name: str
    kind: str
    num_labels: int
    metric: str
    train: Optional[str] = None
    dev: Optional[str] = None
    lower_is_better: bool = False
    record: Optional[Callable] = None     # HF row -> Example, for data sets with their own field names

    @property
    def label_type(self) -> str:
        return "score" if self.kind == "regression" else "class"

    def replace(self, **kw) -> "Task":
        return dataclasses.replace(self, **kw)


# GLUE: (number of labels, the paper's dev metric, dev split). STS-B is regression.
GLUE = {
    "cola": (2, "matthews", "validation"), "sst2": (2, "accuracy", "validation"),
    "mrpc": (2, "f1", "validation"), "stsb": (1, "pearson", "validation"),
    "qqp": (2, "f1", "validation"), "mnli": (3, "accuracy", "validation_matched"),
    "qnli": (2, "accuracy", "validation"), "rte": (2, "accuracy", "validation"),
    "wnli": (2, "accuracy", "validation"),
}
WEBNLG_HF = "web_nlg/webnlg_challenge_2017"


def webnlg_record(row: dict, where: str, label_type: str = "class") -> Example:
    """One HF `web_nlg` row -> Example(linearised triples, target = first reference)."""
    from ..data import linearise
    try:
        triples = [[x.strip() for x in t.split("|")] for t in row["modified_triple_sets"]["mtriple_set"][0]]
        texts = row["lex"]["text"]
    except (KeyError, IndexError, TypeError, AttributeError):
        raise DataError(f"{where}: not a web_nlg row (needs modified_triple_sets.mtriple_set and lex.text)") from None
    if not texts:
        raise DataError(f"{where}: no reference text")
    return Example(linearise(triples), None, texts[0].strip())


SAMPLE_TASKS = {
    "sample:sentiment": Task("sample:sentiment", "classification", 2, "accuracy", "sample:sentiment"),
    "sample:webnlg": Task("sample:webnlg", "generation", 0, "loss", "sample:webnlg", lower_is_better=True),
}


def task_names() -> tuple:
    return (tuple(f"glue/{t}" for t in GLUE) + ("webnlg",) + tuple(SAMPLE_TASKS) + KINDS)


def get_task(name: str, train: Optional[str] = None, dev: Optional[str] = None) -> Task:
    """The task called `name`, with its train/dev data overridden by `train`/`dev` when given.
    The local kinds (classification, regression, generation) need `train`."""
    if not isinstance(name, str):
        raise FinetuneError(f"task must be a string, got {name!r}")
    if name.startswith("glue/") and name[5:] in GLUE:
        n, metric, split = GLUE[name[5:]]
        task = Task(name, "regression" if n == 1 else "classification", n, metric,
                    f"{name}:train", f"{name}:{split}")
    elif name == "webnlg":
        # Dev selection by dev loss; BLEU/METEOR/TER of greedy decoding are reported beside it.
        task = Task(name, "generation", 0, "loss", f"{WEBNLG_HF}:train", f"{WEBNLG_HF}:dev", True, webnlg_record)
    elif name in SAMPLE_TASKS:
        task = SAMPLE_TASKS[name]
    elif name in KINDS:
        if train is None:
            raise FinetuneError(f"task {name!r} reads local files: give the training data (--train FILE)")
        metric = {"classification": "accuracy", "regression": "pearson", "generation": "loss"}[name]
        task = Task(name, name, {"classification": 2, "regression": 1, "generation": 0}[name], metric,
                    lower_is_better=name == "generation")
    else:
        raise FinetuneError(f"unknown task {name!r}; known: {', '.join(task_names())}")
    if train is not None:
        task = task.replace(train=train)
    if dev is not None:
        task = task.replace(dev=dev)
    return task


def check_head(cfg, task: Task) -> None:
    """The model's head fits the task: an LM for generation, one output for regression,
    `num_labels` classes for classification."""
    if task.kind == "generation":
        if cfg.head != "lm":
            raise FinetuneError(f"task {task.name} generates text: it needs a language model (GPT-2); "
                                f"{cfg.family} has head {cfg.head!r}")
        return
    if cfg.head != "classifier":
        raise FinetuneError(f"task {task.name} ({task.kind}) needs a classifier head; {cfg.family} has head "
                            f"{cfg.head!r}")
    if task.kind == "regression" and cfg.num_labels != 1:
        raise FinetuneError(f"task {task.name} is a regression: it needs a head with one output (num_labels 1); "
                            f"the model's classifier has {cfg.num_labels} classes")
    if task.kind == "classification" and cfg.num_labels < 2:
        raise FinetuneError(f"task {task.name} is a classification: the model's head has {cfg.num_labels} "
                            "output (a regression head); load it with num_labels >= 2")


__all__ = ["KINDS", "GLUE", "Task", "FinetuneError", "get_task", "task_names", "check_head", "webnlg_record",
           "SAMPLE_TASKS"]
