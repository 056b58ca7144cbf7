"""Layer-wise task-specific tuning (the paper's 1-epoch step, METHOD.md §4).

Only the compressed layers' MLP params are trained, to minimise
(1/L) Σ_l mean_tokens ‖h_l − h_l^teacher‖², where h_l is layer l's output hidden
state and the teacher is the uncompressed model on the same task inputs (padding
excluded). Only the trainable leaves of those blocks are differentiated and updated
(`ntkfuse.frozen`): fusion's counts and MoE routers come back bitwise unchanged, and every
other array of `params` as the very same object.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from .. import validate
from ..models import ModelConfig, check_batch, forward, get_mlp, replace_mlps
from ..frozen import frozen_adamw, merge_frozen, split_frozen, trainable_grad
from .collect import check_layers


class TuneError(ValueError):
    """Bad layer-wise tuning input."""


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    epochs: int = 1
    progress: bool = False

    def __post_init__(self):
        validate.check_positive("lr", self.lr, error=TuneError)
        validate.check_positive("epochs", self.epochs, integer=True, error=TuneError)


def hidden_loss(cfg: ModelConfig, student: dict, teacher: dict, batch: dict, layers: tuple) -> jax.Array:
    """(1/L) Σ_l mean over non-pad tokens of ‖h_l − h_l^teacher‖² (h_l = output of layer l;
    an encoder-decoder's decoder layers over the decoder's tokens, `cfg.mask_key`)."""
    hs = forward(cfg, student, batch, collect=True).hidden_states
    ht = jax.lax.stop_gradient(forward(cfg, teacher, batch, collect=True).hidden_states)
    per = []
    for l in layers:
        i = cfg.hidden_state_index(l)
        mask = batch.get(cfg.mask_key(i))
        mask = jnp.ones(hs[i].shape[:2], jnp.float32) if mask is None else mask.astype(jnp.float32)
        per.append(jnp.sum(jnp.sum(jnp.square(hs[i] - ht[i]), -1) * mask) / jnp.maximum(mask.sum(), 1.0))
    return sum(per) / len(layers)


@functools.lru_cache(maxsize=8)
def _step(cfg: ModelConfig, layers: tuple, tc: TuneConfig):
    sched = (optax.warmup_constant_schedule(0.0, tc.lr, tc.warmup_steps) if tc.warmup_steps else tc.lr)
    # MoE routers stay as they are (no gradient, no decay): only the experts are tuned.
    tx = frozen_adamw(sched, weight_decay=tc.weight_decay)

    def loss(blocks, params, teacher, batch):
        return hidden_loss(cfg, replace_mlps(params, dict(zip(layers, blocks))), teacher, batch, layers)

    value_and_grad = trainable_grad(loss)

    @jax.jit
    def step(blocks, opt_state, params, teacher, batch):
        val, g = value_and_grad(blocks, params, teacher, batch)
        trainable, frozen = split_frozen(blocks)
        upd, opt_state = tx.update(g, opt_state, trainable)
        return merge_frozen(optax.apply_updates(trainable, upd), frozen), opt_state, val

    return tx, step


def layerwise_tune(cfg: ModelConfig, params: dict, teacher: dict, batches: Sequence[dict],
                   layers: Sequence[int], tc: TuneConfig = TuneConfig()) -> tuple[dict, list]:
    """Tune the MLPs of `layers` in `params` (the compressed model) towards `teacher`'s
    hidden states for `tc.epochs` passes over `batches`. Returns (new params, losses per step)."""
    layers = check_layers(cfg, layers)
    batches = list(batches)
    if not batches:
        raise TuneError("no batches to tune on")
    for b in batches:
        check_batch(cfg, b)
    if len(params["layers"]) != len(teacher["layers"]):
        raise TuneError("student and teacher have different numbers of layers")
    blocks = tuple(get_mlp(params, l) for l in layers)
    tx, step = _step(cfg, layers, tc)
    opt_state = tx.init(blocks)
    losses = []
    from tqdm.auto import tqdm
    for _ in range(tc.epochs):
        for b in tqdm(batches, disable=not tc.progress, desc="tune", leave=False):
            blocks, opt_state, val = step(blocks, opt_state, params, teacher,
                                          {k: jnp.asarray(v) for k, v in b.items() if v is not None})
            losses.append(float(val))
    return replace_mlps(params, dict(zip(layers, blocks))), losses
