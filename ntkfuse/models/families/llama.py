"""Llama-style decoders (Llama, Mistral, Qwen2): pre-RMSNorm, rotary position embeddings
(plain, "linear" and "llama3" scaling), grouped-query attention, a SwiGLU MLP (`GatedMLP`),
causal + padding mask (Mistral: sliding window), tied or untied LM head.

The three HF model types share one forward; their configs differ only in fields this
module reads: Qwen2 has q/k/v biases, Llama an `attention_bias` switch for q/k/v/o,
Mistral a `sliding_window`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ..blocks import GatedMLP
from ..layers import attention_bias, dropout, linear
from ..outputs import ModelOutput
from ..stack import run_layers
from .common import (LAYERS, decoder_inputs, hf_activation, hf_num_labels, normal, pre_norm_layer, pre_norm_output,
                     site_key)
from .registry import Family, UnsupportedModelError

ROPE_TYPES = ("default", "linear", "llama3")


# --------------------------------------------------------------------------- layers


def rms_norm(p: dict, x, eps: float):
    """HF's RMSNorm: statistics in float32, the normalised x cast back before the scale."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), -1, keepdims=True) + eps)
    return p["scale"].astype(x.dtype) * y.astype(x.dtype)


def rope_frequencies(cfg) -> jnp.ndarray:
    """(head_dim/2,) inverse frequencies θ^(-2i/hd), rescaled as `cfg.rope_scaling` says."""
    hd = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    sc = dict(cfg.rope_scaling or ())
    kind = sc.get("rope_type", "default")
    if kind == "linear":
        return inv / sc["factor"]
    if kind == "llama3":
        factor, lo, hi = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
        old = sc["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = jnp.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        return jnp.where(medium, smoothed, scaled)
    return inv


def rotary(x, cos, sin):
    """x (B, T, H, hd) rotated by position: x cos + rotate_half(x) sin (HF's half-split layout)."""
    h = x.shape[-1] // 2
    rot = jnp.concatenate([-x[..., h:], x[..., :h]], axis=-1)
    return x * cos[:, :, None, :] + rot * sin[:, :, None, :]


def gqa_attention(cfg, p: dict, x, bias, cos, sin, key=None):
    """Grouped-query self-attention: `num_kv_heads` key/value heads, each shared by
    num_heads / num_kv_heads query heads."""
    b, t, _ = x.shape
    H, K, hd = cfg.num_heads, cfg.kv_heads, cfg.head_dim
    q = rotary(linear(p["q"], x).reshape(b, t, H, hd), cos, sin)
    k = rotary(linear(p["k"], x).reshape(b, t, K, hd), cos, sin)
    v = linear(p["v"], x).reshape(b, t, K, hd)
    q = q.reshape(b, t, K, H // K, hd)
    scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(hd)) + bias[:, :, None]
    probs = dropout(jax.nn.softmax(scores, axis=-1).astype(x.dtype), cfg.attention_dropout, key)
    ctx = jnp.einsum("bkgqs,bskd->bqkgd", probs, v).reshape(b, t, H * hd)
    return linear(p["o"], ctx)


def forward(cfg, params: dict, batch: dict, collect: bool = False, rng=None) -> ModelOutput:
    ids, mask, pos = decoder_inputs(batch)
    h = params["embed"]["word"][ids]
    bias = attention_bias(mask, causal=True)
    if cfg.sliding_window:
        t = ids.shape[1]
        i, j = jnp.arange(t)[:, None], jnp.arange(t)[None, :]
        bias = jnp.where(i - j < cfg.sliding_window, bias, jnp.finfo(jnp.float32).min)
    ang = pos[..., None].astype(jnp.float32) * rope_frequencies(cfg)
    ang = jnp.concatenate([ang, ang], axis=-1)
    cos, sin = jnp.cos(ang).astype(h.dtype), jnp.sin(ang).astype(h.dtype)
    eps = cfg.layer_norm_eps
    layer = pre_norm_layer(cfg, rms_norm, lambda p, x, k: gqa_attention(cfg, p, x, bias, cos, sin, k), collect)
    hs0 = h
    h, aux = run_layers(layer, params["layers"], h, scan=cfg.scan_layers, remat=cfg.remat, rng=site_key(rng, LAYERS))
    h = rms_norm(params["ln_f"], h, eps)
    logits = None
    if cfg.head == "lm":
        w = params["embed"]["word"] if cfg.tie_word_embeddings else params["lm_head"]["w"]
        logits = h @ w.T.astype(h.dtype)
    if not collect:
        return ModelOutput(logits, h)
    return pre_norm_output(logits, h, hs0, aux)


# --------------------------------------------------------------------------- init and weights


def _attn_shapes(cfg):
    d, hd = cfg.hidden, cfg.head_dim
    return {"q": (cfg.num_heads * hd, d, cfg.qkv_bias), "k": (cfg.kv_heads * hd, d, cfg.qkv_bias),
            "v": (cfg.kv_heads * hd, d, cfg.qkv_bias), "o": (d, cfg.num_heads * hd, cfg.out_bias)}


def gated_init(cfg, keys, dtype):
    """A Llama layer's MLP: a random GatedMLP (3 keys from the iterator `keys`)."""
    d, D = cfg.hidden, cfg.intermediate
    return GatedMLP(normal(next(keys), (D, d), dtype), normal(next(keys), (D, d), dtype),
                    normal(next(keys), (d, D), dtype))


def init(cfg, key, dtype=jnp.float32, mlp_init=gated_init, mlp_keys=3) -> dict:
    """Random weights; `mlp_init(cfg, keys, dtype)` builds each layer's MLP from `mlp_keys` keys."""
    d = cfg.hidden
    keys = iter(jax.random.split(key, 2 + (4 + mlp_keys) * cfg.num_layers))
    ones = lambda: {"scale": jnp.ones((d,), dtype)}  # noqa: E731

    def layer():
        attn = {n: {"w": normal(next(keys), (o, i), dtype), "b": jnp.zeros((o,), dtype) if b else None}
                for n, (o, i, b) in _attn_shapes(cfg).items()}
        return {"attn": attn, "ln_attn": ones(), "mlp": mlp_init(cfg, keys, dtype), "ln_mlp": ones()}

    params = {"embed": {"word": normal(next(keys), (cfg.vocab_size, d), dtype)},
              "layers": [layer() for _ in range(cfg.num_layers)], "ln_f": ones()}
    if not cfg.tie_word_embeddings:
        params["lm_head"] = {"w": normal(next(keys), (cfg.vocab_size, d), dtype)}
    return params


def gated_from_hf(cfg, tensors, take, pre):
    """Layer `pre`'s SwiGLU MLP (mlp.gate_proj, up_proj, down_proj) as a GatedMLP."""
    d, D = cfg.hidden, cfg.intermediate
    return GatedMLP(take(f"{pre}.mlp.gate_proj.weight", (D, d)), take(f"{pre}.mlp.up_proj.weight", (D, d)),
                    take(f"{pre}.mlp.down_proj.weight", (d, D)))


def params_from_hf(cfg, tensors, take, mlp_from_hf=gated_from_hf) -> dict:
    """HF names (model prefix dropped); `mlp_from_hf(cfg, tensors, take, "layers.{i}")` reads each MLP."""
    d = cfg.hidden
    layers = []
    for i in range(cfg.num_layers):
        pre = f"layers.{i}"
        attn = {n: {"w": take(f"{pre}.self_attn.{n}_proj.weight", (o, inp)),
                    "b": take(f"{pre}.self_attn.{n}_proj.bias", (o,)) if b else None}
                for n, (o, inp, b) in _attn_shapes(cfg).items()}
        layers.append({"attn": attn, "ln_attn": {"scale": take(f"{pre}.input_layernorm.weight", (d,))},
                       "mlp": mlp_from_hf(cfg, tensors, take, pre),
                       "ln_mlp": {"scale": take(f"{pre}.post_attention_layernorm.weight", (d,))}})
    params = {"embed": {"word": take("embed_tokens.weight", (cfg.vocab_size, d))}, "layers": layers,
              "ln_f": {"scale": take("norm.weight", (d,))}}
    if not cfg.tie_word_embeddings:
        params["lm_head"] = {"w": take("lm_head.weight", (cfg.vocab_size, d))}
    return params


def _rope(d: dict) -> tuple:
    """(rope_theta, rope_scaling as sorted (key, value) pairs or None) from either HF layout:
    `rope_parameters` (transformers ≥ 5) or `rope_theta` + `rope_scaling`."""
    rp = dict(d.get("rope_parameters") or {})
    theta = rp.pop("rope_theta", d.get("rope_theta", 10000.0))
    sc = dict(d.get("rope_scaling") or {}) or rp
    kind = sc.get("rope_type", sc.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise UnsupportedModelError(f"unsupported rope_type {kind!r}; supported: {', '.join(ROPE_TYPES)}")
    if kind == "default":
        return float(theta), None
    need = {"linear": ("factor",),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}[kind]
    missing = [k for k in need if k not in sc]
    if missing:
        raise UnsupportedModelError(f"rope_type {kind!r} needs {', '.join(missing)} in the config")
    return float(theta), (("rope_type", kind),) + tuple((k, float(sc[k])) for k in need)


def config_from_hf(d, *, head=None, num_labels=None, name="") -> dict:
    mt = d.get("model_type")
    if d.get("mlp_bias"):
        raise UnsupportedModelError("mlp_bias=True is not supported (GatedMLP is bias-free)")
    hd = d.get("head_dim")
    if hd is not None and hd * d["num_attention_heads"] != d["hidden_size"]:
        raise UnsupportedModelError(f"head_dim {hd} × num_attention_heads ≠ hidden_size {d['hidden_size']} "
                                    "is not supported")
    if mt == "qwen2" and d.get("use_sliding_window"):
        raise UnsupportedModelError("qwen2 with use_sliding_window=True is not supported")
    theta, scaling = _rope(d)
    bias = bool(d.get("attention_bias", False))
    window = d.get("sliding_window") if mt == "mistral" else None
    return dict(family="llama", vocab_size=d["vocab_size"], hidden=d["hidden_size"],
                intermediate=d["intermediate_size"], num_layers=d["num_hidden_layers"],
                num_heads=d["num_attention_heads"],
                num_kv_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
                max_positions=d.get("max_position_embeddings", 2048),
                activation=hf_activation(d.get("hidden_act", "silu")),
                layer_norm_eps=d.get("rms_norm_eps", 1e-6), type_vocab_size=0,
                pad_token_id=d.get("pad_token_id") or 0, num_labels=hf_num_labels(d, num_labels),
                head=head or "lm", name=name, dropout=0.0, attention_dropout=d.get("attention_dropout", 0.0) or 0.0,
                rope_theta=theta, rope_scaling=scaling, tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                qkv_bias=bias or mt == "qwen2", out_bias=bias, sliding_window=window)


FAMILIES = (
    Family(name="llama", model_types=("llama", "mistral", "qwen2"), config_from_hf=config_from_hf, init=init,
           forward=forward, params_from_hf=params_from_hf, heads=("lm", "none"), default_data="sample:webnlg",
           default_output="target-logprob", is_decoder=True, token_types=False, hf_prefixes=()),
)
