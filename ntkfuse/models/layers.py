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
