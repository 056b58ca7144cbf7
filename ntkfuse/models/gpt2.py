"""GPT-2 (pre-LN decoder, tanh GELU, causal + padding mask, LM head tied to the embeddings)."""
from __future__ import annotations

import jax.numpy as jnp

from .config import ModelConfig
from .layers import attention_bias, layer_norm, self_attention
from .blocks import apply_mlp
from .outputs import ModelOutput


def forward(cfg: ModelConfig, params: dict, batch: dict, collect: bool = False) -> ModelOutput:
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    if mask is None:
        mask = jnp.ones_like(ids)
    pos = batch.get("position_ids")
    if pos is None:  # HF's default: 0..T-1 whatever the padding (pad on the right).
        pos = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    p = params["embed"]
    h = p["word"][ids] + p["position"][pos]
    bias = attention_bias(mask, causal=True)
    eps = cfg.layer_norm_eps
    hs, mins, mouts = [h], [], []
    for lp in params["layers"]:
        h = h + self_attention(lp["attn"], layer_norm(lp["ln_attn"], h, eps), bias, cfg.num_heads)
        x = layer_norm(lp["ln_mlp"], h, eps)
        m = apply_mlp(lp["mlp"], x, cfg.activation)
        if collect:
            mins.append(x)
            mouts.append(m)
        h = h + m
        hs.append(h)
    h = layer_norm(params["ln_f"], h, eps)
    hs[-1] = h
    logits = None
    if cfg.head == "lm":
        logits = h @ p["word"].T.astype(h.dtype)
    if not collect:
        return ModelOutput(logits, h)
    return ModelOutput(logits, h, tuple(hs), tuple(mins), tuple(mouts))
