"""Approximation errors of a compressed model against the original (METHOD.md §3)."""
from __future__ import annotations

from typing import Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ..compile import oneshot_jit
from ..models import forward


class MetricError(ValueError):
    """Mismatched shapes or arguments to a metric."""


def ntk_error(K_new, K_ref) -> dict:
    """{"abs": ‖K′−K‖_F (what the reference prints), "rel": ‖K′−K‖_F / ‖K‖_F}, computed in float64."""
    a, b = np.asarray(K_new, np.float64), np.asarray(K_ref, np.float64)
    if a.shape != b.shape:
        raise MetricError(f"kernel shapes differ: {a.shape} vs {b.shape}")
    diff = float(np.linalg.norm(a - b))
    ref = float(np.linalg.norm(b))
    return {"abs": diff, "rel": diff / ref if ref > 0 else float("inf")}


def changed_layers(params_ref, params_new) -> list[int]:
    """Layers whose MLP block differs (type, shapes or values) between the two models."""
    out = []
    for l, (a, b) in enumerate(zip(params_ref["layers"], params_new["layers"])):
        ma, mb = a["mlp"], b["mlp"]
        la, lb = jax.tree_util.tree_leaves(ma), jax.tree_util.tree_leaves(mb)
        same = (type(ma) is type(mb) and jax.tree_util.tree_structure(ma) == jax.tree_util.tree_structure(mb)
                and all(x.shape == y.shape and bool(jnp.array_equal(x, y)) for x, y in zip(la, lb)))
        if not same:
            out.append(l)
    return out


@oneshot_jit(static_argnames=("cfg", "layer"))
def _outputs(cfg, params, batch, layer):
    """(hidden_states[layer], logits) of one batch. Jitted per model structure on its own, so
    comparing many compressed models against one reference compiles the reference once."""
    o = forward(cfg, params, batch, collect=True)
    return o.hidden_states[layer], o.logits


@oneshot_jit
def _sums(h_ref, logits_ref, h_new, logits_new, mask, logits_mask):
    """Sums and counts of the hidden-state distances (tokens of `mask`) and of the logit distances
    (tokens of `logits_mask`: an encoder-decoder's hidden state and logits may be on different sides)."""
    mask = mask.astype(jnp.float32)
    dist = jnp.linalg.norm((h_new - h_ref).astype(jnp.float32), axis=-1)
    h_sum, h_cnt = jnp.sum(dist * mask), jnp.sum(mask)
    if logits_ref is None:
        return h_sum, h_cnt, jnp.float32(0), jnp.float32(0)
    dl = jnp.linalg.norm((logits_new - logits_ref).astype(jnp.float32), axis=-1)
    if dl.ndim == 1:  # classifier: one logit vector per example
        return h_sum, h_cnt, jnp.sum(dl), jnp.float32(dl.shape[0])
    logits_mask = logits_mask.astype(jnp.float32)
    return h_sum, h_cnt, jnp.sum(dl * logits_mask), jnp.sum(logits_mask)


def _batch_sums(cfg, params_ref, params_new, batch, layer):
    fb = {k: v for k, v in batch.items() if k != "target_mask"}
    h_ref, l_ref = _outputs(cfg, params_ref, fb, layer)
    h_new, l_new = _outputs(cfg, params_new, fb, layer)
    return _sums(h_ref, l_ref, h_new, l_new, fb[cfg.mask_key(layer)], fb[cfg.mask_key()])


def output_error(cfg, params_ref, params_new, batches: Iterable[dict], layer: Optional[int] = None) -> dict:
    """Mean ‖h′ − h‖₂ over every non-padding token of every example of every batch.

    `layer` indexes HF-style hidden states (0 = embeddings, l+1 = layer l's output; an
    encoder-decoder's are the encoder's then the decoder's, `cfg.hidden_state_index`);
    default: the output of the last layer whose MLP differs between the two models
    (the last layer if none differs). "logits": per token for an LM, per example for
    a classifier (None without a head); an encoder-decoder's decoder tokens are masked by
    `decoder_attention_mask`. Averages are token- (or example-) weighted
    over ALL batches, not the last batch as the reference prints.
    """
    if isinstance(batches, dict):
        batches = [batches]
    if layer is None:
        changed = changed_layers(params_ref, params_new)
        layer = cfg.hidden_state_index(changed[-1] if changed else cfg.num_layers - 1)
    if not 0 <= layer < cfg.num_hidden_states():
        raise MetricError(f"layer {layer} out of range: hidden states are 0..{cfg.num_hidden_states() - 1} "
                          f"(0 = embeddings, l+1 = layer l's output)")
    sums = np.zeros(4)
    n_batches = 0
    for batch in batches:
        b = {k: jnp.asarray(v) for k, v in batch.items() if v is not None}
        if "attention_mask" not in b:
            b["attention_mask"] = jnp.ones(b["input_ids"].shape, jnp.int32)
        if "decoder_input_ids" in b and "decoder_attention_mask" not in b:
            b["decoder_attention_mask"] = jnp.ones(b["decoder_input_ids"].shape, jnp.int32)
        sums += np.asarray(jax.device_get(_batch_sums(cfg, params_ref, params_new, b, layer)), np.float64)
        n_batches += 1
    if n_batches == 0:
        raise MetricError("output_error needs at least one batch")
    return {"layer": float(sums[0] / max(sums[1], 1.0)),
            "logits": float(sums[2] / sums[3]) if sums[3] > 0 else None,
            "layer_index": int(layer), "tokens": int(sums[1])}


__all__ = ["MetricError", "ntk_error", "output_error", "changed_layers"]
