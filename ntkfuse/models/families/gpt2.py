"""GPT-2 (pre-LN decoder, tanh GELU, causal + padding mask, LM head tied to the embeddings)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ..blocks import DenseMLP
from ..layers import attention_bias, dropout, embed_lookup, layer_norm, self_attention
from ..outputs import ModelOutput
from ..stack import run_layers
from .common import (EMBED, LAYERS, decoder_inputs, embed_rate, hf_activation, hf_linear, hf_ln, hf_num_labels,
                     init_layer, init_ln, normal, pre_norm_layer, pre_norm_output, site_key)
from .registry import Family


def forward(cfg, params: dict, batch: dict, collect: bool = False, rng=None) -> ModelOutput:
    ids, mask, pos = decoder_inputs(batch)
    p = params["embed"]
    h = p["word"][ids] + embed_lookup(p["position"], pos)
    h = dropout(h, embed_rate(cfg), site_key(rng, EMBED))
    bias = attention_bias(mask, causal=True)
    eps = cfg.layer_norm_eps
    layer = pre_norm_layer(cfg, layer_norm, lambda p, x, k: self_attention(p, x, bias, cfg.num_heads,
                                                                          cfg.attention_dropout, k), collect)
    hs0 = h
    h, aux = run_layers(layer, params["layers"], h, scan=cfg.scan_layers, remat=cfg.remat, rng=site_key(rng, LAYERS))
    h = layer_norm(params["ln_f"], h, eps)
    logits = h @ p["word"].T.astype(h.dtype) if cfg.head == "lm" else None
    if not collect:
        return ModelOutput(logits, h)
    return pre_norm_output(logits, h, hs0, aux)


def init(cfg, key, dtype=jnp.float32) -> dict:
    d, D = cfg.hidden, cfg.intermediate
    keys = iter(jax.random.split(key, 8 + 6 * cfg.num_layers))
    embed = {"word": normal(next(keys), (cfg.vocab_size, d), dtype),
             "position": normal(next(keys), (cfg.max_positions, d), dtype)}
    return {"embed": embed, "layers": [init_layer(keys, d, D, dtype) for _ in range(cfg.num_layers)],
            "ln_f": init_ln(d, dtype)}


def params_from_hf(cfg, tensors, take) -> dict:
    d, D = cfg.hidden, cfg.intermediate
    embed = {"word": take("wte.weight", (cfg.vocab_size, d)), "position": take("wpe.weight", (cfg.max_positions, d))}
    layers = []
    for i in range(cfg.num_layers):
        pre = f"h.{i}"
        # Conv1D stores (in, out): transpose to (out, in).
        layers.append({
            "attn": {"qkv": hf_linear(take, f"{pre}.attn.c_attn", 3 * d, d, transpose=True),
                     "out": hf_linear(take, f"{pre}.attn.c_proj", d, d, transpose=True)},
            "ln_attn": hf_ln(take, f"{pre}.ln_1", d),
            "mlp": DenseMLP(take(f"{pre}.mlp.c_fc.weight", (D, d), True), take(f"{pre}.mlp.c_fc.bias", (D,)),
                            take(f"{pre}.mlp.c_proj.weight", (d, D), True), take(f"{pre}.mlp.c_proj.bias", (d,))),
            "ln_mlp": hf_ln(take, f"{pre}.ln_2", d),
        })
    return {"embed": embed, "layers": layers, "ln_f": hf_ln(take, "ln_f", d)}


def config_from_hf(d, *, head=None, num_labels=None, name="") -> dict:
    resid = d.get("resid_pdrop", 0.1)
    embd = d.get("embd_pdrop", 0.1)
    return dict(family="gpt2", vocab_size=d["vocab_size"], hidden=d["n_embd"],
                intermediate=d.get("n_inner") or 4 * d["n_embd"], num_layers=d["n_layer"], num_heads=d["n_head"],
                max_positions=d["n_positions"], activation=hf_activation(d.get("activation_function", "gelu_new")),
                layer_norm_eps=d.get("layer_norm_epsilon", 1e-5), type_vocab_size=0,
                pad_token_id=d.get("pad_token_id") or 0, num_labels=hf_num_labels(d, num_labels),
                head=head or "lm", name=name, dropout=resid, attention_dropout=d.get("attn_pdrop", 0.1),
                embed_dropout=None if embd == resid else embd)


FAMILIES = (
    Family(name="gpt2", model_types=("gpt2",), config_from_hf=config_from_hf, init=init, forward=forward,
           params_from_hf=params_from_hf, heads=("lm", "none"), default_data="sample:webnlg",
           default_output="target-logprob", is_decoder=True, token_types=False, hf_prefixes=("transformer.",),
           cached_decoding=True),
)
