"""Pieces the family modules share: HF activation names, random init in HF's style,
and the HF weight-name helpers (`take` reads one named tensor, checking its shape)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ..blocks import DenseMLP, apply_mlp
from ..layers import dropout
from ..outputs import ModelOutput

# HF activation names -> ntkfuse activation names (see models/mlp.activation_fn).
HF_ACTIVATIONS = {
    "gelu": "gelu",            # exact (erf) GELU: BERT, RoBERTa
    "gelu_new": "gelu_tanh",   # tanh approximation: GPT-2
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",            # Llama-style gated MLPs (SwiGLU)
}


def hf_activation(name: str) -> str:
    from .registry import UnsupportedModelError
    if name not in HF_ACTIVATIONS:
        raise UnsupportedModelError(f"unsupported activation {name!r}")
    return HF_ACTIVATIONS[name]


def hf_num_labels(d: dict, num_labels):
    if num_labels is not None:
        return num_labels
    return len(d["id2label"]) if d.get("id2label") else d.get("num_labels", 2)


# --------------------------------------------------------------------------- random init


def normal(key, shape, dtype, std=0.02):
    return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def init_ln(d, dtype):
    return {"scale": jnp.ones((d,), dtype), "bias": jnp.zeros((d,), dtype)}


def init_linear(key, out, inp, dtype):
    return {"w": normal(key, (out, inp), dtype), "b": jnp.zeros((out,), dtype)}


def init_layer(keys, d, D, dtype) -> dict:
    """One transformer layer (6 keys drawn from the iterator `keys`) with a DenseMLP."""
    return {
        "attn": {"qkv": init_linear(next(keys), 3 * d, d, dtype), "out": init_linear(next(keys), d, d, dtype)},
        "ln_attn": init_ln(d, dtype),
        "mlp": DenseMLP(normal(next(keys), (D, d), dtype), normal(next(keys), (D,), dtype),
                        normal(next(keys), (d, D), dtype), normal(next(keys), (d,), dtype)),
        "ln_mlp": init_ln(d, dtype),
    }


def init_head(cfg, key, dtype=jnp.float32) -> dict:
    """Classifier head as HF initialises it (N(0, 0.02) weights, zero biases)."""
    k1, k2 = jax.random.split(key)
    return {"dense": init_linear(k1, cfg.hidden, cfg.hidden, dtype),
            "out": init_linear(k2, cfg.num_labels, cfg.hidden, dtype)}


# --------------------------------------------------------------------------- HF weight names


def hf_ln(take, pre, d):
    return {"scale": take(f"{pre}.weight", (d,)), "bias": take(f"{pre}.bias", (d,))}


def hf_linear(take, pre, out, inp, transpose=False):
    return {"w": take(f"{pre}.weight", (out, inp), transpose), "b": take(f"{pre}.bias", (out,))}


# --------------------------------------------------------------------------- dropout keys

# Dropout sites inside a layer: fold_in(layer key, site).
ATTN_PROBS, ATTN_OUT, MLP_OUT = 0, 1, 2
# Streams of the forward's rng: fold_in(rng, stream).
EMBED, LAYERS, HEAD = 0, 1, 2


def decoder_inputs(batch: dict) -> tuple:
    """(ids, mask, positions) of a causal decoder's batch with HF's defaults: an all-ones
    mask, and positions 0..T-1 whatever the padding (pad on the right)."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    if mask is None:
        mask = jnp.ones_like(ids)
    pos = batch.get("position_ids")
    if pos is None:
        pos = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    return ids, mask, pos


def embed_rate(cfg) -> float:
    return cfg.dropout if cfg.embed_dropout is None else cfg.embed_dropout


def head_rate(cfg) -> float:
    return cfg.dropout if cfg.classifier_dropout is None else cfg.classifier_dropout


def site_key(key, site):
    return None if key is None else jax.random.fold_in(key, site)


# --------------------------------------------------------------------------- pre-norm decoders


def pre_norm_layer(cfg, norm, attend, collect: bool):
    """The decoder layer GPT-2 and the Llama family share, for `stack.run_layers`:
    h += drop(attend(attn params, norm(h), probs key)); h += drop(mlp(norm(h))). `norm(p, x, eps)`
    is the family's LayerNorm or RMSNorm; with `collect` it also returns (h, MLP input, MLP output)."""
    eps = cfg.layer_norm_eps

    def layer(lp, h, key):
        a = attend(lp["attn"], norm(lp["ln_attn"], h, eps), site_key(key, ATTN_PROBS))
        h = h + dropout(a, cfg.dropout, site_key(key, ATTN_OUT))
        x = norm(lp["ln_mlp"], h, eps)
        m = apply_mlp(lp["mlp"], x, cfg.activation)
        h = h + dropout(m, cfg.dropout, site_key(key, MLP_OUT))
        return h, ((h, x, m) if collect else None)

    return layer


def pre_norm_output(logits, h, hs0, aux) -> ModelOutput:
    """ModelOutput with what the layers collected; as in HF, the last hidden state is the
    final norm's output `h`, not the last layer's."""
    hs, mins, mouts = zip(*aux) if aux else ((), (), ())
    hs = (hs0, *hs[:-1], h) if hs else (h,)
    return ModelOutput(logits, h, hs, tuple(mins), tuple(mouts))
