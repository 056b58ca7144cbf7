"""Layers shared by the transformer families: pure functions over small dicts."""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def linear(p: dict, x: Array) -> Array:
    """p = {"w": (out, in), "b": (out,) or None}; PyTorch's (out, in) layout."""
    y = x @ p["w"].T.astype(x.dtype)
    b = p.get("b")
    return y if b is None else y + b.astype(x.dtype)


def layer_norm(p: dict, x: Array, eps: float) -> Array:
    """LayerNorm computed in float32 (bf16 statistics are too coarse), cast back."""
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    y = y * p["scale"].astype(jnp.float32) + p["bias"].astype(jnp.float32)
    return y.astype(x.dtype)


def attention_bias(attention_mask: Array, causal: bool) -> Array:
    """(B, 1, T, T) additive float32 bias: 0 where a query may attend, a large negative elsewhere."""
    keep = attention_mask[:, None, None, :].astype(bool)
    if causal:
        t = attention_mask.shape[-1]
        keep = keep & jnp.tril(jnp.ones((t, t), bool))[None, None]
    return jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


def dropout(x: Array, rate: float, key) -> Array:
    """Inverted dropout (kept entries scaled by 1/(1-rate), so the mean is unchanged);
    the identity when `key` is None or `rate` is 0, so inference is untouched."""
    if key is None or not rate:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


def self_attention(p: dict, x: Array, bias: Array, num_heads: int, attention_dropout: float = 0.0,
                   key=None) -> Array:
    """Multi-head self-attention with a fused qkv projection p["qkv"] (3d × d) and p["out"];
    dropout on the attention probabilities (HF's place) when `key` is given."""
    b, t, d = x.shape
    hd = d // num_heads
    qkv = linear(p["qkv"], x).reshape(b, t, 3, num_heads, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(hd)) + bias
    probs = dropout(jax.nn.softmax(scores, axis=-1).astype(x.dtype), attention_dropout, key)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, d)
    return linear(p["out"], ctx)


# Tables up to this many rows are looked up by a one-hot matmul (positions, token types).
ONE_HOT_MAX_ROWS = 4096


def embed_lookup(table: Array, ids: Array) -> Array:
    """table[ids], exactly. Small tables go through a one-hot matmul at HIGHEST precision (1·x
    plus exact zeros: bit-identical to the gather) because the gather's gradient is a
    scatter-add into which every token of a batch adds at the same few rows (all of them at
    token type 0, 32 at each position for batch 32): on a GPU those atomics serialise and
    took 50 of the 56 ms of a roberta-base bf16 forward+backward; a matmul's gradient is a
    matmul. Large tables (words) keep the gather: their rows rarely collide."""
    if table.shape[0] > ONE_HOT_MAX_ROWS:
        return table[ids]
    one_hot = jax.nn.one_hot(ids, table.shape[0], dtype=table.dtype)
    return jnp.einsum("...v,vd->...d", one_hot, table, precision=jax.lax.Precision.HIGHEST)
