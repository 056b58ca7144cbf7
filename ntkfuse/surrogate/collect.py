"""Collect each chosen MLP block's (input, output) token pairs from the original model.

One jitted forward (`collect=True`) per batch; padding tokens are dropped on the host,
so what a surrogate is fitted to is exactly what the block sees on real tokens.
`iter_pairs` is a generator (one batch at a time), so a corpus never has to fit in
memory; `collect_pairs` concatenates up to a token budget (a bounded buffer).
"""
from __future__ import annotations

import functools
from typing import Iterable, Iterator, Optional, Sequence

import jax
import numpy as np

from .. import validate
from ..models import ModelConfig, check_batch, forward


class CollectError(ValueError):
    """Bad layers or batches given to collection."""


def check_layers(cfg: ModelConfig, layers: Sequence[int]) -> tuple:
    """`validate.check_layers` against `cfg`, raising CollectError (surrogate fitting's layer check)."""
    return validate.check_layers(layers, cfg.num_layers, error=CollectError)


@functools.lru_cache(maxsize=16)
def _collect_fn(cfg: ModelConfig, layers: tuple):
    def fn(params, batch):
        out = forward(cfg, params, batch, collect=True)
        return [out.mlp_inputs[l] for l in layers], [out.mlp_outputs[l] for l in layers]
    return jax.jit(fn)


def token_mask(batch: dict) -> np.ndarray:
    """(B, T) bool: the tokens that count (attention_mask; all when absent)."""
    ids = np.asarray(batch["input_ids"])
    mask = batch.get("attention_mask")
    return np.ones(ids.shape, bool) if mask is None else np.asarray(mask).astype(bool)


def iter_pairs(cfg: ModelConfig, params: dict, batches: Iterable[dict], layers: Sequence[int],
               dtype=np.float32) -> Iterator[dict]:
    """Yield, per batch, {layer: (X, Y)} with X, Y host arrays (n_tokens, d), padding excluded."""
    layers = check_layers(cfg, layers)
    fn = _collect_fn(cfg, layers)
    for batch in batches:
        check_batch(cfg, batch)
        keep = token_mask(batch)
        xs, ys = fn(params, {k: v for k, v in batch.items() if v is not None})
        yield {l: (np.asarray(x, dtype)[keep], np.asarray(y, dtype)[keep]) for l, x, y in zip(layers, xs, ys)}


def collect_pairs(cfg: ModelConfig, params: dict, batches: Iterable[dict], layers: Sequence[int],
                  max_tokens: Optional[int] = None, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Stacked pairs over the chosen layers: X, Y of shape (L, N, d), at most `max_tokens` tokens.

    Every layer sees the same tokens, so N is shared and the layers stack. Stops
    pulling batches once the budget is met (the generator is not exhausted).
    """
    layers = check_layers(cfg, layers)
    xs, ys, n = [], [], 0
    for pairs in iter_pairs(cfg, params, batches, layers, dtype):
        take = None if max_tokens is None else max_tokens - n
        xs.append(np.stack([pairs[l][0][:take] for l in layers]))
        ys.append(np.stack([pairs[l][1][:take] for l in layers]))
        n += xs[-1].shape[1]
        if max_tokens is not None and n >= max_tokens:
            break
    if not xs or n == 0:
        raise CollectError("no tokens collected: the batches are empty or fully padded")
    return np.concatenate(xs, axis=1), np.concatenate(ys, axis=1)


def batches_from_texts(tok, texts: Sequence[str], batch_size: int = 32, max_length: int = 128) -> Iterator[dict]:
    """Tokenise `texts` in order, `batch_size` at a time (padding to the longest in each batch)."""
    from ..data.tokenize import tokenize
    for i in range(0, len(texts), batch_size):
        yield tokenize(tok, texts[i:i + batch_size], max_length)
