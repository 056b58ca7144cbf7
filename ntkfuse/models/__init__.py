"""Functional transformers: `forward(cfg, params, batch, collect=False, *, rng=None)`.

`params` is a plain pytree: {"embed": ..., "layers": [per-layer dicts], "head"/"ln_f": ...};
each layer's "mlp" entry is an MLP block kind (`ntkfuse.models.blocks`). What differs
between architectures lives in one module per family behind `families.get_family`;
`stack.py` runs the layers (list or lax.scan).
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from .config import ModelConfig
from .families import FAMILIES, SUPPORTED_MODEL_TYPES, Family, UnsupportedModelError, get_family
from .families.common import init_head
from .blocks import (MLP_KINDS, DenseMLP, FusedGatedMLP, FusedMLP, GatedMLP, LinearMLP, LowRankGatedMLP,
                     LowRankLinearMLP, LowRankMLP, activation_fn, apply_mlp, count_params, is_mlp)
from .outputs import ModelOutput


def forward(cfg: ModelConfig, params: dict, batch: dict, collect: bool = False, *, rng=None) -> ModelOutput:
    """Pure forward pass. `batch`: {"input_ids": (B, T) int, "attention_mask": (B, T) 0/1,
    optional "token_type_ids", "position_ids"}. jit with `jax.jit(forward, static_argnums=(0, 3))`.
    With `rng` (a PRNG key) dropout is applied at HF's places with `cfg`'s rates (training);
    without it the forward is deterministic."""
    return get_family(cfg.family).forward(cfg, params, batch, collect, rng)


jit_forward = jax.jit(forward, static_argnums=(0, 3))


def check_batch(cfg: ModelConfig, batch: dict) -> None:
    """Host-side validation that cannot happen under jit: shapes, id ranges."""
    fam = get_family(cfg.family)
    ids = np.asarray(batch["input_ids"])
    _check_ids("input_ids", ids, cfg.vocab_size)
    if cfg.is_encoder_decoder:
        # encoder-decoder: the decoder's sequence has its own length; target_mask is over it
        if batch.get("decoder_input_ids") is None:
            raise ValueError(f"an encoder-decoder ({cfg.family}) batch needs decoder_input_ids beside input_ids")
        dids = np.asarray(batch["decoder_input_ids"])
        _check_ids("decoder_input_ids", dids, cfg.vocab_size)
        if dids.shape[0] != ids.shape[0]:
            raise ValueError(f"decoder_input_ids has {dids.shape[0]} rows, input_ids {ids.shape[0]}")
        for key in ("decoder_attention_mask", "target_mask"):
            if batch.get(key) is not None and np.shape(batch[key]) != dids.shape:
                raise ValueError(f"{key} has shape {np.shape(batch[key])}, decoder_input_ids {dids.shape}")
    elif batch.get("decoder_input_ids") is not None:
        raise ValueError(f"decoder_input_ids given, but {cfg.family} is not an encoder-decoder")
    limit = cfg.max_positions - fam.reserved_positions(cfg)
    if ids.shape[1] > limit:
        raise ValueError(f"sequence length {ids.shape[1]} exceeds the model's {limit} positions")
    for key in ("attention_mask", "token_type_ids", "position_ids"):
        if batch.get(key) is not None and np.shape(batch[key]) != ids.shape:
            raise ValueError(f"{key} has shape {np.shape(batch[key])}, input_ids {ids.shape}")
    tt = batch.get("token_type_ids")
    if tt is not None and fam.token_types:
        tt = np.asarray(tt)
        if tt.size and (tt.min() < 0 or tt.max() >= cfg.type_vocab_size):
            raise ValueError(f"token_type_ids outside [0, {cfg.type_vocab_size})")


def _check_ids(name, ids, vocab_size):
    if ids.ndim != 2:
        raise ValueError(f"{name} must be (batch, length), got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)]
        raise ValueError(f"token ids outside the vocabulary [0, {vocab_size}): e.g. {bad[:5].tolist()}")


def init_params(cfg: ModelConfig, key, dtype=jnp.float32) -> dict:
    """Random weights in ntkfuse's layout (HF-style N(0, 0.02)); for tests and benchmarks."""
    return get_family(cfg.family).init(cfg, key, dtype)


def get_mlp(params: dict, layer: int):
    return params["layers"][layer]["mlp"]


def replace_mlps(params: dict, blocks: dict) -> dict:
    """New params with `params["layers"][l]["mlp"] = blocks[l]` for each l; nothing else copied."""
    n = len(params["layers"])
    for l in blocks:
        if not 0 <= l < n:
            raise IndexError(f"layer {l} out of range: the model has layers 0..{n - 1}")
    layers = [dict(lp, mlp=blocks[i]) if i in blocks else lp for i, lp in enumerate(params["layers"])]
    return {**params, "layers": layers}


__all__ = ["ModelConfig", "ModelOutput", "SUPPORTED_MODEL_TYPES", "UnsupportedModelError", "FAMILIES", "Family",
           "get_family", "forward", "jit_forward", "check_batch", "init_params", "init_head", "get_mlp", "replace_mlps", "DenseMLP",
           "FusedMLP", "GatedMLP", "FusedGatedMLP", "LowRankGatedMLP", "LowRankMLP", "LinearMLP", "LowRankLinearMLP",
           "MLP_KINDS",
           "apply_mlp", "activation_fn", "count_params", "is_mlp"]
