"""BERT and RoBERTa encoders (post-LN) with the sequence-classification head."""
from __future__ import annotations

import jax.numpy as jnp

from .config import ModelConfig
from .layers import attention_bias, layer_norm, linear, self_attention
from .blocks import apply_mlp
from .outputs import ModelOutput


def position_ids(cfg: ModelConfig, input_ids, attention_mask):
    if cfg.family == "roberta":
        # HF create_position_ids_from_input_ids: count only non-pad tokens, offset by pad id.
        not_pad = (input_ids != cfg.pad_token_id).astype(jnp.int32)
        return jnp.cumsum(not_pad, axis=1) * not_pad + cfg.pad_token_id
    return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)


def embed(cfg: ModelConfig, p: dict, batch: dict):
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    pos = batch.get("position_ids")
    if pos is None:
        pos = position_ids(cfg, ids, mask)
    tt = batch.get("token_type_ids")
    if tt is None:
        tt = jnp.zeros_like(ids)
    h = p["word"][ids] + p["position"][pos] + p["token_type"][tt]
    return layer_norm(p["ln"], h, cfg.layer_norm_eps)


def forward(cfg: ModelConfig, params: dict, batch: dict, collect: bool = False) -> ModelOutput:
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    if mask is None:
        mask = jnp.ones_like(ids)
    h = embed(cfg, params["embed"], batch)
    bias = attention_bias(mask, causal=False)
    hs, mins, mouts = [h], [], []
    for lp in params["layers"]:
        h = layer_norm(lp["ln_attn"], h + self_attention(lp["attn"], h, bias, cfg.num_heads), cfg.layer_norm_eps)
        m = apply_mlp(lp["mlp"], h, cfg.activation)
        if collect:
            mins.append(h)
            mouts.append(m)
        h = layer_norm(lp["ln_mlp"], h + m, cfg.layer_norm_eps)
        hs.append(h)
    logits = None
    if cfg.head == "classifier":
        # BERT's pooler+classifier and RoBERTa's classification head are the same
        # function at inference: out(tanh(dense(h[:, 0]))).
        hp = params["head"]
        logits = linear(hp["out"], jnp.tanh(linear(hp["dense"], h[:, 0])))
    if not collect:
        return ModelOutput(logits, h)
    return ModelOutput(logits, h, tuple(hs), tuple(mins), tuple(mouts))
