"""Layer sensitivity: replace one MLP block at a time and measure how the final
output moves (METHOD.md §4). The singleton curves feed width allocation.

Divergences, averaged over examples (classifier: KL of class distributions) or over
tokens (decoder LM: KL of next-token distributions at every non-padding token,
`target_mask` not used; encoder-decoder: KL of the decoder's next-token distributions
that predict target tokens — position t − 1 for each t of `target_mask`, the convention
of `ntk.target_logprob` — since the decoder's input before the target is only the start
token). KL is KL(p_ref ‖ p_new). The output error is `ntkfuse.ntk.output_error` at the
final layer's output (an encoder-decoder's: the decoder's).
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from .. import validate
from ..models import ModelConfig, check_batch, count_params, forward, get_mlp, replace_mlps
from .collect import check_layers


class SensitivityError(ValueError):
    """Bad sensitivity input."""


def _kl(logp_ref, logp_new):
    return jnp.sum(jnp.exp(logp_ref) * (logp_ref - logp_new), -1)


@functools.partial(jax.jit, static_argnums=0)
def _kl_sums(cfg: ModelConfig, p_ref, p_new, batch):
    lr = jax.nn.log_softmax(forward(cfg, p_ref, batch).logits.astype(jnp.float32), -1)
    ln = jax.nn.log_softmax(forward(cfg, p_new, batch).logits.astype(jnp.float32), -1)
    kl = _kl(lr, ln)
    if kl.ndim == 1:                                   # classifier: per example
        return kl.sum(), jnp.array(kl.shape[0], jnp.float32)
    if cfg.is_encoder_decoder:   # position t - 1 predicts target token t
        tm = batch["target_mask"].astype(jnp.float32)
        mask = jnp.concatenate([tm[:, 1:], jnp.zeros_like(tm[:, :1])], axis=1)
    else:
        mask = batch.get("attention_mask")
        mask = jnp.ones(kl.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    return (kl * mask).sum(), mask.sum()


def output_kl(cfg: ModelConfig, p_ref: dict, p_new: dict, batches: Sequence[dict]) -> float:
    """Mean KL(p_ref ‖ p_new) of the output distributions (classes per example,
    next-token distributions per non-pad token for a decoder LM, per target token for an
    encoder-decoder)."""
    if cfg.head == "none":
        raise SensitivityError("the model has no head (head='none'): no output distribution to compare; "
                               "use head='classifier' or 'lm'")
    tot, n = 0.0, 0.0
    for b in batches:
        if cfg.is_encoder_decoder and b.get("target_mask") is None:
            raise SensitivityError("an encoder-decoder's KL is over its target tokens: each batch needs a "
                                   "target_mask (data.make_batch gives one)")
        s, c = _kl_sums(cfg, p_ref, p_new, {k: jnp.asarray(v) for k, v in b.items() if v is not None})
        tot, n = tot + float(s), n + float(c)
    return tot / max(n, 1.0)


def replace_one(cfg: ModelConfig, params: dict, layer: int, method: str, width: int, key, **options) -> dict:
    """params with layer `layer`'s MLP compressed by `method` to `width` (one-shot)."""
    from ..compress import compress_block
    block = compress_block(get_mlp(params, layer), method, width, key, activation=cfg.activation, **options)
    return replace_mlps(params, {layer: block})


def layer_sensitivity(cfg: ModelConfig, params: dict, batches: Sequence[dict], layers: Sequence[int],
                      widths: Sequence[int], method: str = "prune", key=None,
                      replace: Optional[Callable] = None, output_layer: Optional[int] = None,
                      **options) -> list[dict]:
    """One row per (layer, width): {"layer", "width", "params", "kl", "output_error", "logit_error"}.

    output_error: mean ‖Δh‖₂ over non-pad tokens at hidden state `output_layer`
    (HF indexing, default the last layer's output, `cfg.hidden_state_index`); logit_error:
    the same on logits.

    `replace(cfg, params, layer, width, key) -> params` overrides the one-shot
    compression (default: `replace_one` with `method`).
    """
    from ..ntk import output_error
    layers = check_layers(cfg, layers)
    batches = list(batches)
    if not batches:
        raise SensitivityError("no batches")
    for b in batches:
        check_batch(cfg, b)
    if not len(widths):
        raise SensitivityError("no widths given")
    widths = [int(validate.check_positive("widths", w, integer=True, error=SensitivityError)) for w in widths]
    key = jax.random.PRNGKey(0) if key is None else key
    out_layer = cfg.hidden_state_index(cfg.num_layers - 1) if output_layer is None else output_layer
    rows = []
    for l in layers:
        for w in widths:
            k = jax.random.fold_in(jax.random.fold_in(key, l), w)
            new = (replace(cfg, params, l, w, k) if replace is not None
                   else replace_one(cfg, params, l, method, w, k, **options))
            err = output_error(cfg, params, new, batches, out_layer)
            rows.append({"layer": l, "width": w, "params": count_params(get_mlp(new, l)),
                         "kl": output_kl(cfg, params, new, batches),
                         "output_error": err["layer"], "logit_error": err["logits"]})
    return rows


def sensitivity_options(cfg: ModelConfig, params: dict, rows: Sequence[dict], metric: str = "kl",
                        include_full: bool = True) -> dict:
    """Allocation options {layer: [Option]} from sensitivity rows (+ the uncompressed block at 0)."""
    from .allocation import options_from_sensitivity
    table = {}
    for r in rows:
        table.setdefault(r["layer"], {})[r["width"]] = (r["params"], r[metric])
    full = {l: (get_mlp(params, l).width, count_params(get_mlp(params, l))) for l in table} if include_full else None
    return options_from_sensitivity(table, full)
