"""Collect each chosen MLP block's (input, output) token pairs from the original model.

One jitted forward (`collect=True`) per batch; padding tokens are dropped on the host,
so what a surrogate is fitted to is exactly what the block sees on real tokens. Each layer
is masked by the padding mask of its own side (`layer_mask`): an encoder-decoder's encoder
layers by `attention_mask`, its decoder layers by `decoder_attention_mask`, so layers of the
two sides have different token counts.

A capacity-bound MoE layer (Switch: at most `capacity` tokens per expert per sequence) gives
an exact zero for a token over capacity whatever its experts are, and which tokens those are
depends only on the router and the layer input, both kept by a surrogate. Its pairs therefore
hold only the dispatched tokens, on which the block equals its capacity-free version
(`without_capacity`): fitting that version on flattened tokens is exact, where counting
capacity across the flattened tokens of many sequences would not be.

`iter_pairs` is a generator (one batch at a time), so a corpus never has to fit in
memory; `collect_layer_pairs` concatenates per layer up to a token budget (a bounded
buffer), `collect_pairs` stacks layers that share their tokens.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Iterable, Iterator, Optional, Sequence

import jax
import numpy as np

from .. import validate
from ..models import ModelConfig, check_batch, forward, get_mlp


class CollectError(ValueError):
    """Bad layers or batches given to collection."""


def check_layers(cfg: ModelConfig, layers: Sequence[int]) -> tuple:
    """`validate.check_layers` against `cfg`, raising CollectError (surrogate fitting's layer check)."""
    return validate.check_layers(layers, cfg.num_layers, error=CollectError)


def capacity_bound(block) -> bool:
    """Whether `block` drops tokens over an expert capacity counted along the sequence axis."""
    return getattr(block, "capacity", None) is not None


def without_capacity(block):
    """`block` with no expert capacity: equal to `block` on every token it dispatches, and
    callable on flattened tokens (what fitting and block errors use)."""
    return dataclasses.replace(block, capacity=None) if capacity_bound(block) else block


@functools.lru_cache(maxsize=16)
def _collect_fn(cfg: ModelConfig, layers: tuple):
    def fn(params, batch):
        out = forward(cfg, params, batch, collect=True)
        xs = [out.mlp_inputs[l] for l in layers]
        # a capacity-bound MoE layer: which tokens its router dispatched (weight > 0), per sequence
        sent = [get_mlp(params, l).routing(x)[0].sum(-1) > 0 if capacity_bound(get_mlp(params, l)) else None
                for l, x in zip(layers, xs)]
        return xs, [out.mlp_outputs[l] for l in layers], sent
    return jax.jit(fn)


def token_mask(batch: dict, key: str = "attention_mask", ids: str = "input_ids") -> np.ndarray:
    """(B, T) bool: the tokens that count (`batch[key]`; all of `batch[ids]` when absent)."""
    mask = batch.get(key)
    return np.ones(np.shape(batch[ids]), bool) if mask is None else np.asarray(mask).astype(bool)


def layer_mask(cfg: ModelConfig, batch: dict, layer: int) -> np.ndarray:
    """(B, T) bool: the real tokens of MLP layer `layer`'s side (an encoder-decoder's decoder
    layers: `decoder_attention_mask` over `decoder_input_ids`)."""
    key = cfg.mask_key(cfg.hidden_state_index(layer))
    return token_mask(batch, key, "decoder_input_ids" if key == "decoder_attention_mask" else "input_ids")


def iter_pairs(cfg: ModelConfig, params: dict, batches: Iterable[dict], layers: Sequence[int],
               dtype=np.float32) -> Iterator[dict]:
    """Yield, per batch, {layer: (X, Y)} with X, Y host arrays (n_tokens, d): the layer side's
    real tokens (`layer_mask`), and of a capacity-bound MoE layer only those it dispatched."""
    layers = check_layers(cfg, layers)
    fn = _collect_fn(cfg, layers)
    for batch in batches:
        check_batch(cfg, batch)
        xs, ys, sent = fn(params, {k: v for k, v in batch.items() if v is not None})
        pairs = {}
        for l, x, y, s in zip(layers, xs, ys, sent):
            keep = layer_mask(cfg, batch, l) & (True if s is None else np.asarray(s))
            pairs[l] = (np.asarray(x, dtype)[keep], np.asarray(y, dtype)[keep])
        yield pairs


def collect_layer_pairs(cfg: ModelConfig, params: dict, batches: Iterable[dict], layers: Sequence[int],
                        max_tokens: Optional[int] = None, dtype=np.float32) -> dict:
    """{layer: (X, Y)} of shape (N_l, d) each, at most `max_tokens` tokens per layer. N_l differs
    between an encoder-decoder's sides and for capacity-bound MoE layers. Stops pulling batches
    once every layer's budget is met (the generator is not exhausted)."""
    layers = check_layers(cfg, layers)
    xs, ys, n = {l: [] for l in layers}, {l: [] for l in layers}, dict.fromkeys(layers, 0)
    for pairs in iter_pairs(cfg, params, batches, layers, dtype):
        for l in layers:
            take = None if max_tokens is None else max(max_tokens - n[l], 0)
            xs[l].append(pairs[l][0][:take])
            ys[l].append(pairs[l][1][:take])
            n[l] += len(xs[l][-1])
        if max_tokens is not None and min(n.values()) >= max_tokens:
            break
    empty = [l for l in layers if n[l] == 0]
    if empty:
        raise CollectError(f"no tokens collected for layers {empty}: the batches are empty or fully padded")
    return {l: (np.concatenate(xs[l]), np.concatenate(ys[l])) for l in layers}


def collect_pairs(cfg: ModelConfig, params: dict, batches: Iterable[dict], layers: Sequence[int],
                  max_tokens: Optional[int] = None, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Stacked pairs over the chosen layers: X, Y of shape (L, N, d), at most `max_tokens` tokens.

    The layers must see the same tokens (one side of the model, no capacity-bound MoE layer
    dropping some), so N is shared and the layers stack; otherwise use `collect_layer_pairs`.
    """
    layers = check_layers(cfg, layers)
    pairs = collect_layer_pairs(cfg, params, batches, layers, max_tokens, dtype)
    counts = {l: len(pairs[l][0]) for l in layers}
    if len(set(counts.values())) != 1:
        raise CollectError(f"layers {list(layers)} have different token counts {counts} (an encoder-decoder's "
                           "two sides, or a capacity-bound MoE layer): they do not stack; use collect_layer_pairs")
    return np.stack([pairs[l][0] for l in layers]), np.stack([pairs[l][1] for l in layers])


def batches_from_texts(tok, texts: Sequence[str], batch_size: int = 32, max_length: int = 128) -> Iterator[dict]:
    """Tokenise `texts` in order, `batch_size` at a time (padding to the longest in each batch)."""
    from ..data.tokenize import tokenize
    for i in range(0, len(texts), batch_size):
        yield tokenize(tok, texts[i:i + batch_size], max_length)
