"""Mixtral (HF `MixtralForCausalLM`, model_type "mixtral"): the Llama-family decoder (pre-RMSNorm,
rotary embeddings, grouped-query attention, optional sliding window as Mistral) whose MLP is a
sparse Mixture-of-Experts (`MoEMLP`: a bias-free router over `num_experts` SwiGLU experts, top-k
routing renormalised to sum 1). The forward is llama.py's: the layer calls its MLP block, and
the block is an MoEMLP here (docs/moe.md).

HF weight names read, per layer `layers.{i}` (model prefix dropped), either layout:
- as save_pretrained writes them (transformers 4 and 5): `block_sparse_moe.gate.weight` (E, d) and
  `block_sparse_moe.experts.{e}.w1.weight` (gate, (D, d)), `w3` (up, (D, d)), `w2` (down, (d, D));
- transformers 5's in-memory layout: `mlp.gate.weight` (E, d), `mlp.experts.gate_up_proj`
  (E, 2D, d; gate rows first, then up) and `mlp.experts.down_proj` (E, d, D).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ..blocks import GatedMLP, MoEMLP
from . import llama
from .common import normal
from .registry import Family, UnsupportedModelError


def moe_init(cfg, keys, dtype):
    d, D, E = cfg.hidden, cfg.intermediate, cfg.num_experts
    router = normal(next(keys), (E, d), dtype)
    k = next(keys)
    ks = jax.random.split(k, 3 * E)
    experts = tuple(GatedMLP(normal(ks[3 * e], (D, d), dtype), normal(ks[3 * e + 1], (D, d), dtype),
                             normal(ks[3 * e + 2], (d, D), dtype)) for e in range(E))
    return MoEMLP(router, experts, cfg.experts_per_token)


def init(cfg, key, dtype=jnp.float32) -> dict:
    return llama.init(cfg, key, dtype, mlp_init=moe_init, mlp_keys=2)


def moe_from_hf(cfg, tensors, take, pre):
    """Layer `pre`'s MoE block from either HF layout (module docstring)."""
    d, D, E = cfg.hidden, cfg.intermediate, cfg.num_experts
    if f"{pre}.mlp.experts.gate_up_proj" in tensors:   # transformers 5 fused experts
        gate_up = take(f"{pre}.mlp.experts.gate_up_proj", (E, 2 * D, d))
        down = take(f"{pre}.mlp.experts.down_proj", (E, d, D))
        router = take(f"{pre}.mlp.gate.weight", (E, d))
        experts = tuple(GatedMLP(gate_up[e, :D], gate_up[e, D:], down[e])
                        for e in range(E))
    else:
        m = f"{pre}.block_sparse_moe"
        router = take(f"{m}.gate.weight", (E, d))
        experts = tuple(GatedMLP(take(f"{m}.experts.{e}.w1.weight", (D, d)), take(f"{m}.experts.{e}.w3.weight", (D, d)),
                                 take(f"{m}.experts.{e}.w2.weight", (d, D))) for e in range(E))
    return MoEMLP(router, experts, cfg.experts_per_token)


def params_from_hf(cfg, tensors, take) -> dict:
    return llama.params_from_hf(cfg, tensors, take, mlp_from_hf=moe_from_hf)


def config_from_hf(d, *, head=None, num_labels=None, name="") -> dict:
    out = llama.config_from_hf(d, head=head, num_labels=num_labels, name=name)
    E, k = d.get("num_local_experts"), d.get("num_experts_per_tok")
    if not E or not k:
        raise UnsupportedModelError("a mixtral config needs num_local_experts and num_experts_per_tok")
    # Mixtral has no attention biases; its sliding window (None in most checkpoints) works as Mistral's.
    out.update(family="mixtral", sliding_window=d.get("sliding_window"), num_experts=int(E),
               experts_per_token=int(k), qkv_bias=False, out_bias=False)
    return out


FAMILIES = (
    Family(name="mixtral", model_types=("mixtral",), config_from_hf=config_from_hf, init=init,
           forward=llama.forward, params_from_hf=params_from_hf, heads=("lm", "none"),
           default_data="sample:webnlg", default_output="target-logprob", is_decoder=True, token_types=False,
           hf_prefixes=()),
)
