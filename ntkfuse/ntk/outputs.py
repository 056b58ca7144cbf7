"""Scalar outputs f(x; θ) per example, whose gradients define the empirical NTK.

Each output is a frozen dataclass called as ``fn(cfg, params, example) -> scalar``,
where `example` is the batch dict of ONE example: arrays of shape (T,) (the engine
vmaps over the example axis). Hashable, so outputs can be static jit arguments.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..models import forward


class OutputError(ValueError):
    """An output does not fit the model (wrong head, class index out of range, ...)."""


def _logits(cfg, params, example):
    batch = {k: v[None] for k, v in example.items() if v is not None}
    return forward(cfg, params, batch).logits[0]


def _need_classifier(cfg, what, *classes):
    if cfg.head != "classifier":
        raise OutputError(f"{what} needs a classifier head; the model's head is {cfg.head!r} "
                          f"(use target_logprob() for an LM)")
    for c in classes:
        if not 0 <= c < cfg.num_labels:
            raise OutputError(f"{what}: class {c} out of range 0..{cfg.num_labels - 1}")


@dataclasses.dataclass(frozen=True)
class ClassProb:
    c: int = 0

    def check(self, cfg):
        _need_classifier(cfg, "class_prob", self.c)

    def __call__(self, cfg, params, example):
        return jax.nn.softmax(_logits(cfg, params, example).astype(jnp.float32))[self.c]


@dataclasses.dataclass(frozen=True)
class Logit:
    c: int = 0

    def check(self, cfg):
        _need_classifier(cfg, "logit", self.c)

    def __call__(self, cfg, params, example):
        return _logits(cfg, params, example)[self.c].astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class LogitDiff:
    a: int = 0
    b: int = 1

    def check(self, cfg):
        _need_classifier(cfg, "logit_diff", self.a, self.b)

    def __call__(self, cfg, params, example):
        z = _logits(cfg, params, example).astype(jnp.float32)
        return z[self.a] - z[self.b]


@dataclasses.dataclass(frozen=True)
class TargetLogprob:
    """log p(target tokens) under a decoder LM.

    Convention (HF `labels` style, shift inside): ``target_mask[t] == 1`` means token
    ``input_ids[t]`` is a target, predicted from position t-1; its term is
    ``log_softmax(logits[t-1])[input_ids[t]]``. ``target_mask[0]`` is ignored (nothing
    predicts the first token). "sum" adds the terms; "mean" divides by their number
    (max(count, 1)). An encoder-decoder's example has `decoder_input_ids` (the decoder start
    token, then the target): the same convention holds on the decoder's sequence, whose logits
    these are, and `target_mask` is over it.
    """
    reduction: str = "sum"

    def check(self, cfg):
        if cfg.head != "lm":
            raise OutputError(f"target_logprob needs an LM head; the model's head is {cfg.head!r}")
        if self.reduction not in ("sum", "mean"):
            raise OutputError(f"target_logprob reduction {self.reduction!r}; expected 'sum' or 'mean'")

    def needs(self):
        return ("target_mask",)

    def __call__(self, cfg, params, example):
        ids = example.get("decoder_input_ids", example["input_ids"])
        mask = example["target_mask"][1:].astype(jnp.float32)
        logits = _logits(cfg, params, {k: v for k, v in example.items() if k != "target_mask"})
        logp = jax.nn.log_softmax(logits[:-1].astype(jnp.float32), axis=-1)
        tok = jnp.take_along_axis(logp, ids[1:, None], axis=-1)[:, 0]
        total = jnp.sum(tok * mask)
        if self.reduction == "mean":
            total = total / jnp.maximum(mask.sum(), 1.0)
        return total


def class_prob(c: int = 0) -> ClassProb:
    """softmax(logits)[c] (the reference's choice, c = 0)."""
    return ClassProb(int(c))


def logit(c: int) -> Logit:
    return Logit(int(c))


def logit_diff(a: int, b: int) -> LogitDiff:
    return LogitDiff(int(a), int(b))


def target_logprob(reduction: str = "sum") -> TargetLogprob:
    out = TargetLogprob(reduction)
    if reduction not in ("sum", "mean"):
        raise OutputError(f"target_logprob reduction {reduction!r}; expected 'sum' or 'mean'")
    return out


__all__ = ["OutputError", "ClassProb", "Logit", "LogitDiff", "TargetLogprob", "class_prob", "logit",
           "logit_diff", "target_logprob"]
