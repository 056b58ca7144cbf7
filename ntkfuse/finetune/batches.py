"""Examples -> fixed-shape training and evaluation batches.

Every example is tokenised once (`encode`), right-padded to `max_length`. A batch always
has `batch_size` rows (the last one is filled with weight-0 rows) and its length is the
smallest bucket that holds its longest row, so the jitted steps compile once per bucket,
not once per batch. Dropping trailing padding columns changes nothing (padding is
masked out of attention, and RoBERTa's positions count non-pad tokens only).

A batch: input_ids, attention_mask (+ token_type_ids for BERT), `weight` (1 real row,
0 filler) and `labels` (int classes / float scores) or `target_mask` (generation: 1 on
the target tokens, see ntkfuse.data.batching.lm_batch).
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np

from ..data import DataError, Example
from ..models.families import get_family
from .tasks import Task


def bucket_lengths(max_length: int, smallest: int = 16) -> tuple:
    """Powers of two from `smallest` below `max_length`, then `max_length` itself."""
    out, n = [], smallest
    while n < max_length:
        out.append(n)
        n *= 2
    return tuple(out) + (max_length,)


def encode(cfg, tok, examples: Sequence[Example], task: Task, max_length: int) -> dict:
    """Token arrays of all `examples`, (N, max_length) each, plus labels or target_mask."""
    if not examples:
        raise DataError("no examples to encode")
    if tok is None:
        raise DataError("the model has no tokenizer; a checkpoint directory needs tokenizer files")
    if task.kind == "generation":
        from ..data import lm_batch
        b = lm_batch(tok, examples, max_length)
        out = {k: _pad_to(v, max_length, tok.pad_token_id if k == "input_ids" else 0) for k, v in b.items()}
    else:
        texts = [e.text if e.target is None else f"{e.text} {e.target}" for e in examples]
        pairs = [e.text_pair for e in examples]
        if any(p is not None for p in pairs) and not all(p is not None for p in pairs):
            raise DataError("some examples have a sentence pair and some do not")
        enc = tok(texts, pairs if pairs[0] is not None else None, padding="max_length", truncation=True,
                  max_length=max_length, return_tensors="np")
        # segment ids only where the model has more than one token type (BERT; RoBERTa's single type is 0)
        types = get_family(cfg.family).token_types and cfg.type_vocab_size > 1
        keep = ("input_ids", "attention_mask") + (("token_type_ids",) if types else ())
        out = {k: np.asarray(enc[k], np.int32) for k in keep if k in enc}
        dtype = np.float32 if task.kind == "regression" else np.int32
        out["labels"] = np.asarray([e.label for e in examples], dtype)
    out["length"] = out["attention_mask"].sum(1).astype(np.int32)
    return out


def _pad_to(a, length, value):
    a = np.asarray(a, np.int32)
    if a.shape[1] >= length:
        return a[:, :length]
    return np.pad(a, ((0, 0), (0, length - a.shape[1])), constant_values=value)


def num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def batches(data: dict, batch_size: int, buckets: Sequence[int], order: Optional[np.ndarray] = None,
            pad_id: int = 0) -> Iterator[dict]:
    """Fixed-size batches over `data` (from `encode`) in `order` (default: as stored)."""
    n = len(data["length"])
    order = np.arange(n) if order is None else np.asarray(order)
    for s in range(0, n, batch_size):
        idx = order[s:s + batch_size]
        real = len(idx)
        longest = int(data["length"][idx].max())
        t = next((b for b in buckets if b >= longest), buckets[-1])
        fill = np.concatenate([idx, np.full(batch_size - real, idx[0])]) if real < batch_size else idx
        out = {k: v[fill][:, :t] if v.ndim == 2 else v[fill] for k, v in data.items() if k != "length"}
        w = np.zeros(batch_size, np.float32)
        w[:real] = 1.0
        out["weight"] = w
        yield out


__all__ = ["bucket_lengths", "encode", "batches", "num_batches"]
