"""Functional transformers: `forward(cfg, params, batch, collect=False)`.

`params` is a plain pytree: {"embed": ..., "layers": [per-layer dicts], "head"/"ln_f": ...};
each layer's "mlp" entry is an MLP kind from `ntkfuse.models.mlp`.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from . import bert, gpt2
from .config import SUPPORTED_MODEL_TYPES, ModelConfig, UnsupportedModelError
from .blocks import (MLP_KINDS, DenseMLP, FusedMLP, LinearMLP, LowRankLinearMLP, LowRankMLP, activation_fn,
                  apply_mlp, count_params, is_mlp)
from .outputs import ModelOutput

_FORWARDS = {"bert": bert.forward, "roberta": bert.forward, "gpt2": gpt2.forward}


def forward(cfg: ModelConfig, params: dict, batch: dict, collect: bool = False, *, rng=None) -> ModelOutput:
    """Pure forward pass. `batch`: {"input_ids": (B, T) int, "attention_mask": (B, T) 0/1,
    optional "token_type_ids", "position_ids"}. jit with `jax.jit(forward, static_argnums=(0, 3))`."""
    del rng  # dropout: families branch
    return _FORWARDS[cfg.family](cfg, params, batch, collect)


jit_forward = jax.jit(forward, static_argnums=(0, 3))


def check_batch(cfg: ModelConfig, batch: dict) -> None:
    """Host-side validation that cannot happen under jit: shapes, id ranges."""
    ids = np.asarray(batch["input_ids"])
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab_size):
        bad = ids[(ids < 0) | (ids >= cfg.vocab_size)]
        raise ValueError(f"token ids outside the vocabulary [0, {cfg.vocab_size}): e.g. {bad[:5].tolist()}")
    limit = cfg.max_positions - (cfg.pad_token_id + 1 if cfg.family == "roberta" else 0)
    if ids.shape[1] > limit:
        raise ValueError(f"sequence length {ids.shape[1]} exceeds the model's {limit} positions")
    for key in ("attention_mask", "token_type_ids", "position_ids"):
        if batch.get(key) is not None and np.shape(batch[key]) != ids.shape:
            raise ValueError(f"{key} has shape {np.shape(batch[key])}, input_ids {ids.shape}")
    tt = batch.get("token_type_ids")
    if tt is not None and cfg.family != "gpt2":
        tt = np.asarray(tt)
        if tt.size and (tt.min() < 0 or tt.max() >= cfg.type_vocab_size):
            raise ValueError(f"token_type_ids outside [0, {cfg.type_vocab_size})")


def _normal(key, shape, dtype, std=0.02):
    return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def _ln(d, dtype):
    return {"scale": jnp.ones((d,), dtype), "bias": jnp.zeros((d,), dtype)}


def _lin(key, out, inp, dtype):
    return {"w": _normal(key, (out, inp), dtype), "b": jnp.zeros((out,), dtype)}


def init_head(cfg: ModelConfig, key, dtype=jnp.float32) -> dict:
    """Classifier head as HF initialises it (N(0, 0.02) weights, zero biases)."""
    k1, k2 = jax.random.split(key)
    return {"dense": _lin(k1, cfg.hidden, cfg.hidden, dtype), "out": _lin(k2, cfg.num_labels, cfg.hidden, dtype)}


def init_params(cfg: ModelConfig, key, dtype=jnp.float32) -> dict:
    """Random weights in ntkfuse's layout (HF-style N(0, 0.02)); for tests and benchmarks."""
    d, D = cfg.hidden, cfg.intermediate
    keys = iter(jax.random.split(key, 8 + 6 * cfg.num_layers))
    embed = {"word": _normal(next(keys), (cfg.vocab_size, d), dtype),
             "position": _normal(next(keys), (cfg.max_positions, d), dtype)}
    if cfg.family != "gpt2":
        embed["token_type"] = _normal(next(keys), (max(cfg.type_vocab_size, 1), d), dtype)
        embed["ln"] = _ln(d, dtype)
    layers = []
    for _ in range(cfg.num_layers):
        layers.append({
            "attn": {"qkv": _lin(next(keys), 3 * d, d, dtype), "out": _lin(next(keys), d, d, dtype)},
            "ln_attn": _ln(d, dtype),
            "mlp": DenseMLP(_normal(next(keys), (D, d), dtype), _normal(next(keys), (D,), dtype),
                            _normal(next(keys), (d, D), dtype), _normal(next(keys), (d,), dtype)),
            "ln_mlp": _ln(d, dtype),
        })
    params = {"embed": embed, "layers": layers}
    if cfg.family == "gpt2":
        params["ln_f"] = _ln(d, dtype)
    if cfg.head == "classifier":
        params["head"] = init_head(cfg, next(keys), dtype)
    return params


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


__all__ = ["ModelConfig", "ModelOutput", "SUPPORTED_MODEL_TYPES", "UnsupportedModelError", "forward",
           "jit_forward", "check_batch", "init_params", "init_head", "get_mlp", "replace_mlps", "DenseMLP",
           "FusedMLP", "LowRankMLP", "LinearMLP", "LowRankLinearMLP", "MLP_KINDS", "apply_mlp",
           "activation_fn", "count_params", "is_mlp"]
