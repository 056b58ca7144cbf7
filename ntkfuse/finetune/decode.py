"""Greedy decoding for GPT-2 with a key/value cache, in one jitted loop.

The prompt is prefilled in one forward that also fills the cache; then one token per
step of a `lax.while_loop` that stops when every row has emitted EOS or after
`max_new_tokens`. Shapes are fixed by (batch, prompt length, max_new_tokens), so one
shape compiles once; `eos_id`/`pad_id` are traced values, not compile-time constants.

Padding: prompts are right-padded (ntkfuse's convention, `data.batching.lm_batch`);
left-padded batches work too. Rows are not realigned: each row keeps its own positions
(the count of real tokens before it, as HF derives them from the attention mask) and the
cache carries a key mask (the prompt's `attention_mask`, then one slot per generated
step shared by all rows), so a row's padding is never attended to. A row of length L
thus sees exactly what an unpadded forward of that row sees.

Layers are ntkfuse's own (`layer_norm`, `linear`, `apply_mlp`), so any MLP block kind —
dense, fused, low-rank, linear surrogates — decodes unchanged.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ..models import ModelConfig, check_batch
from ..models.blocks import apply_mlp
from ..models.layers import attention_bias, layer_norm, linear
from ..models.families import get_family

Array = jax.Array


class Generation(NamedTuple):
    """`tokens` (B, max_new_tokens) int32, `pad_id` after a row's EOS; `lengths` (B,) tokens
    generated per row, EOS included; `logits` (B, max_new_tokens, vocab) float32 of the
    step that chose each token (only with `return_logits=True`, else None)."""
    tokens: Array
    lengths: Array
    logits: Optional[Array] = None


class DecodeError(ValueError):
    """Bad arguments to `greedy_decode` (raised before any compilation)."""


def _attend(q: Array, k: Array, v: Array, bias: Array, dtype) -> Array:
    """Softmax attention with the same operations and precisions as `layers.self_attention`
    (float32 scores, probabilities cast back), so cached and full forwards agree."""
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(q.shape[-1])) + bias
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    b, t = q.shape[:2]
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, -1)


def _layers(cfg: ModelConfig, params: dict, h: Array, bias: Array, cache: tuple, slot) -> tuple[Array, tuple]:
    """The decoder stack on `h` (B, t, d) whose keys/values go to cache slots [slot, slot+t);
    queries attend to the whole cache under `bias` (B, 1, t, S). Returns (h, new cache)."""
    b, t, d = h.shape
    nh, eps = cfg.num_heads, cfg.layer_norm_eps
    new_cache = []
    for lp, (kc, vc) in zip(params["layers"], cache):
        qkv = linear(lp["attn"]["qkv"], layer_norm(lp["ln_attn"], h, eps)).reshape(b, t, 3, nh, d // nh)
        kc = jax.lax.dynamic_update_slice_in_dim(kc, qkv[:, :, 1].astype(kc.dtype), slot, axis=1)
        vc = jax.lax.dynamic_update_slice_in_dim(vc, qkv[:, :, 2].astype(vc.dtype), slot, axis=1)
        h = h + linear(lp["attn"]["out"], _attend(qkv[:, :, 0], kc, vc, bias, h.dtype))
        h = h + apply_mlp(lp["mlp"], layer_norm(lp["ln_mlp"], h, eps), cfg.activation)
        new_cache.append((kc, vc))
    return h, tuple(new_cache)


def _logits(cfg: ModelConfig, params: dict, h: Array) -> Array:
    h = layer_norm(params["ln_f"], h, cfg.layer_norm_eps)
    return (h @ params["embed"]["word"].T.astype(h.dtype)).astype(jnp.float32)


def _decode(cfg: ModelConfig, max_new_tokens: int, return_logits: bool, params: dict, ids: Array, mask: Array,
            eos_id: Array, pad_id: Array) -> Generation:
    b, t = ids.shape
    n = max_new_tokens
    size = t + n - 1                       # the last chosen token is never fed back
    nh, hd = cfg.num_heads, cfg.head_dim
    word, position = params["embed"]["word"], params["embed"]["position"]
    dtype = word.dtype
    mask = mask.astype(jnp.int32)
    lengths = mask.sum(-1)                                    # real prompt tokens per row
    pos = jnp.maximum(jnp.cumsum(mask, -1) - 1, 0)           # HF's positions from the mask
    last = t - 1 - jnp.argmax(mask[:, ::-1], axis=-1)        # index of each row's last real token
    cache = tuple((jnp.zeros((b, size, nh, hd), dtype), jnp.zeros((b, size, nh, hd), dtype))
                  for _ in params["layers"])

    # Prefill: the prompt's causal, padding-masked attention over cache slots [0, t).
    bias = attention_bias(mask, causal=True)
    bias = jnp.pad(bias, ((0, 0), (0, 0), (0, 0), (0, size - t)), constant_values=jnp.finfo(jnp.float32).min)
    h, cache = _layers(cfg, params, word[ids] + position[pos], bias, cache, 0)
    h_last = jnp.take_along_axis(h, last[:, None, None], axis=1)
    logits = _logits(cfg, params, h_last)[:, 0]
    tok = jnp.argmax(logits, -1).astype(jnp.int32)
    out = jnp.full((b, n), pad_id, jnp.int32).at[:, 0].set(tok)
    done = tok == eos_id
    logit_buf = jnp.zeros((b, n, cfg.vocab_size), jnp.float32).at[:, 0].set(logits) if return_logits else None
    slots = jnp.arange(size)
    prompt_keep = jnp.pad(mask, ((0, 0), (0, size - t))).astype(bool)

    def cond(state):
        j, _, _, done, _ = state
        return (j < n) & ~jnp.all(done)

    def body(state):
        j, out, cache, done, logit_buf = state
        prev = out[:, j - 1]                              # fed at slot t + j - 1, position L + j - 1
        keep = jnp.where(slots < t, prompt_keep, slots <= t + j - 1)       # (B, S): prompt, then steps so far
        step_bias = jnp.where(keep[:, None, None, :], 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
        h = (word[prev] + position[lengths + j - 1])[:, None]
        h, cache = _layers(cfg, params, h, step_bias, cache, t + j - 1)
        logits = _logits(cfg, params, h)[:, 0]
        tok = jnp.where(done, pad_id, jnp.argmax(logits, -1).astype(jnp.int32))
        out = out.at[:, j].set(tok)
        done = done | (tok == eos_id)
        if return_logits:
            logit_buf = logit_buf.at[:, j].set(logits)
        return j + 1, out, cache, done, logit_buf

    _, out, _, _, logit_buf = jax.lax.while_loop(cond, body, (jnp.int32(1), out, cache, done, logit_buf))
    hit = out == eos_id
    gen_len = jnp.where(hit.any(-1), jnp.argmax(hit, -1) + 1, n).astype(jnp.int32)
    return Generation(out, gen_len, logit_buf)


_decode_jit = jax.jit(_decode, static_argnums=(0, 1, 2))


def greedy_decode(cfg: ModelConfig, params: dict, batch: dict, max_new_tokens: int = 40, *,
                  eos_id: Optional[int] = None, pad_id: Optional[int] = None,
                  return_logits: bool = False) -> Generation:
    """Greedy continuation of each prompt in `batch` ({"input_ids", "attention_mask"}, (B, T),
    right-padded; left padding also works) by at most `max_new_tokens` tokens, stopping a row
    at `eos_id` (None: never) and the loop once every row has stopped. Tokens after a row's
    EOS are `pad_id` (default: `eos_id`, else 0), as HF `generate` pads them.
    Equals HF `GPT2LMHeadModel.generate(do_sample=False, num_beams=1)` token for token."""
    # The cached step below implements the layers of families that declare `cached_decoding`
    # (GPT-2's pre-LN layer with learned positions); others need their own step first.
    if not get_family(cfg.family).cached_decoding or cfg.head != "lm":
        raise DecodeError(f"greedy decoding with a KV cache needs a decoder language model whose family "
                          f"supports it (head lm, cached_decoding); got family {cfg.family!r}, head {cfg.head!r}")
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise DecodeError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    ids = np.asarray(batch["input_ids"])
    mask = batch.get("attention_mask")
    mask = np.ones_like(ids) if mask is None else np.asarray(mask)
    try:
        check_batch(cfg, {"input_ids": ids, "attention_mask": mask})
    except ValueError as e:
        raise DecodeError(str(e)) from e
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise DecodeError(f"empty prompt batch of shape {ids.shape}")
    if not np.isin(mask, (0, 1)).all():
        raise DecodeError("attention_mask must be 0/1")
    real = mask.astype(bool)
    if not real.any(-1).all():
        raise DecodeError(f"prompt rows {np.flatnonzero(~real.any(-1)).tolist()} have no tokens")
    # A contiguous run of real tokens per row (right or left padding), never holes.
    if ((np.diff(real.astype(np.int8), axis=-1) == 1).sum(-1) + real[:, 0] > 1).any():
        raise DecodeError("attention_mask must be one contiguous run of 1s per row (right or left padding)")
    if ids.shape[1] + max_new_tokens - 1 > cfg.max_positions:
        raise DecodeError(f"prompt length {ids.shape[1]} + max_new_tokens {max_new_tokens} - 1 exceeds the "
                          f"model's {cfg.max_positions} positions")
    for name, v in (("eos_id", eos_id), ("pad_id", pad_id)):
        if v is not None and not 0 <= v < cfg.vocab_size:
            raise DecodeError(f"{name} {v} outside the vocabulary [0, {cfg.vocab_size})")
    pad = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
    eos = -1 if eos_id is None else eos_id
    return _decode_jit(cfg, int(max_new_tokens), bool(return_logits), params, jnp.asarray(ids, jnp.int32),
                       jnp.asarray(mask, jnp.int32), jnp.int32(eos), jnp.int32(pad))
