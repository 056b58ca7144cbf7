"""BERT and RoBERTa encoders (post-LN) with the sequence-classification head.

The two entries share everything except position ids (RoBERTa counts only non-pad
tokens, offset by the pad id, and so loses pad_token_id + 1 positions), the head's
dropout places, and the HF weight names of RoBERTa's classification head.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..blocks import DenseMLP, apply_mlp
from ..layers import attention_bias, dropout, embed_lookup, layer_norm, linear, self_attention
from ..outputs import ModelOutput
from ..stack import run_layers
from .common import (ATTN_OUT, ATTN_PROBS, EMBED, HEAD, LAYERS, MLP_OUT, embed_rate, head_rate, hf_activation,
                     hf_linear, hf_ln, hf_num_labels, init_head, init_layer, init_ln, normal, site_key)
from .registry import Family


def bert_position_ids(cfg, input_ids):
    return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)


def roberta_position_ids(cfg, input_ids):
    # HF create_position_ids_from_input_ids: count only non-pad tokens, offset by pad id.
    not_pad = (input_ids != cfg.pad_token_id).astype(jnp.int32)
    return jnp.cumsum(not_pad, axis=1) * not_pad + cfg.pad_token_id


def bert_head(cfg, hp, h, key):
    """BertForSequenceClassification: out(dropout(tanh(pooler(h[:, 0]))))."""
    pooled = jnp.tanh(linear(hp["dense"], h[:, 0]))
    return linear(hp["out"], dropout(pooled, head_rate(cfg), site_key(key, 0)))


def roberta_head(cfg, hp, h, key):
    """RobertaClassificationHead: out(dropout(tanh(dense(dropout(h[:, 0])))))."""
    x = dropout(h[:, 0], head_rate(cfg), site_key(key, 0))
    x = dropout(jnp.tanh(linear(hp["dense"], x)), head_rate(cfg), site_key(key, 1))
    return linear(hp["out"], x)


def _forward(position_ids, head):
    def forward(cfg, params: dict, batch: dict, collect: bool = False, rng=None) -> ModelOutput:
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        if mask is None:
            mask = jnp.ones_like(ids)
        p = params["embed"]
        pos = batch.get("position_ids")
        if pos is None:
            pos = position_ids(cfg, ids)
        tt = batch.get("token_type_ids")
        if tt is None:
            tt = jnp.zeros_like(ids)
        eps = cfg.layer_norm_eps
        h = layer_norm(p["ln"], p["word"][ids] + embed_lookup(p["position"], pos) + embed_lookup(p["token_type"], tt),
                       eps)
        h = dropout(h, embed_rate(cfg), site_key(rng, EMBED))
        bias = attention_bias(mask, causal=False)

        def layer(lp, h, key):
            a = self_attention(lp["attn"], h, bias, cfg.num_heads, cfg.attention_dropout, site_key(key, ATTN_PROBS))
            h = layer_norm(lp["ln_attn"], h + dropout(a, cfg.dropout, site_key(key, ATTN_OUT)), eps)
            m = apply_mlp(lp["mlp"], h, cfg.activation)
            out = layer_norm(lp["ln_mlp"], h + dropout(m, cfg.dropout, site_key(key, MLP_OUT)), eps)
            return out, ((out, h, m) if collect else None)

        hs0 = h
        h, aux = run_layers(layer, params["layers"], h, scan=cfg.scan_layers, remat=cfg.remat,
                            rng=site_key(rng, LAYERS))
        logits = head(cfg, params["head"], h, site_key(rng, HEAD)) if cfg.head == "classifier" else None
        if not collect:
            return ModelOutput(logits, h)
        hs, mins, mouts = zip(*aux) if aux else ((), (), ())
        return ModelOutput(logits, h, (hs0, *hs), tuple(mins), tuple(mouts))
    return forward


def init(cfg, key, dtype=jnp.float32) -> dict:
    d, D = cfg.hidden, cfg.intermediate
    keys = iter(jax.random.split(key, 8 + 6 * cfg.num_layers))
    embed = {"word": normal(next(keys), (cfg.vocab_size, d), dtype),
             "position": normal(next(keys), (cfg.max_positions, d), dtype),
             "token_type": normal(next(keys), (max(cfg.type_vocab_size, 1), d), dtype),
             "ln": init_ln(d, dtype)}
    params = {"embed": embed, "layers": [init_layer(keys, d, D, dtype) for _ in range(cfg.num_layers)]}
    if cfg.head == "classifier":
        params["head"] = init_head(cfg, next(keys), dtype)
    return params


def _encoder_params(cfg, take) -> dict:
    d, D = cfg.hidden, cfg.intermediate
    embed = {"word": take("embeddings.word_embeddings.weight", (cfg.vocab_size, d)),
             "position": take("embeddings.position_embeddings.weight", (cfg.max_positions, d)),
             "token_type": take("embeddings.token_type_embeddings.weight", (cfg.type_vocab_size, d)),
             "ln": hf_ln(take, "embeddings.LayerNorm", d)}
    layers = []
    for i in range(cfg.num_layers):
        pre = f"encoder.layer.{i}"
        qkv = [hf_linear(take, f"{pre}.attention.self.{n}", d, d) for n in ("query", "key", "value")]
        layers.append({
            "attn": {"qkv": {"w": np.concatenate([q["w"] for q in qkv]), "b": np.concatenate([q["b"] for q in qkv])},
                     "out": hf_linear(take, f"{pre}.attention.output.dense", d, d)},
            "ln_attn": hf_ln(take, f"{pre}.attention.output.LayerNorm", d),
            "mlp": DenseMLP(take(f"{pre}.intermediate.dense.weight", (D, d)), take(f"{pre}.intermediate.dense.bias", (D,)),
                            take(f"{pre}.output.dense.weight", (d, D)), take(f"{pre}.output.dense.bias", (d,))),
            "ln_mlp": hf_ln(take, f"{pre}.output.LayerNorm", d),
        })
    return {"embed": embed, "layers": layers}


def _pooler_head(cfg, tensors, take) -> dict:
    """BERT: pooler + classifier, each only if the checkpoint has it (the loader fills the rest)."""
    head = {}
    if "pooler.dense.weight" in tensors:
        head["dense"] = hf_linear(take, "pooler.dense", cfg.hidden, cfg.hidden)
    if "classifier.weight" in tensors:
        head["out"] = hf_linear(take, "classifier", cfg.num_labels, cfg.hidden)
    return head


def bert_params_from_hf(cfg, tensors, take) -> dict:
    params = _encoder_params(cfg, take)
    if cfg.head == "classifier":
        params["head"] = _pooler_head(cfg, tensors, take)
    return params


def roberta_params_from_hf(cfg, tensors, take) -> dict:
    params = _encoder_params(cfg, take)
    if cfg.head == "classifier":
        if "classifier.dense.weight" in tensors:   # RobertaForSequenceClassification's own head
            params["head"] = {"dense": hf_linear(take, "classifier.dense", cfg.hidden, cfg.hidden),
                              "out": hf_linear(take, "classifier.out_proj", cfg.num_labels, cfg.hidden)}
        else:
            params["head"] = _pooler_head(cfg, tensors, take)
    return params


def _config_from_hf(family, default_pad):
    def config_from_hf(d, *, head=None, num_labels=None, name="") -> dict:
        pad = d.get("pad_token_id")
        return dict(family=family, vocab_size=d["vocab_size"], hidden=d["hidden_size"],
                    intermediate=d["intermediate_size"], num_layers=d["num_hidden_layers"],
                    num_heads=d["num_attention_heads"], max_positions=d["max_position_embeddings"],
                    activation=hf_activation(d.get("hidden_act", "gelu")),
                    layer_norm_eps=d.get("layer_norm_eps", 1e-12), type_vocab_size=d.get("type_vocab_size", 2),
                    pad_token_id=default_pad if pad is None else pad, num_labels=hf_num_labels(d, num_labels),
                    head=head or "classifier", name=name,
                    # HF's defaults where config.json omits them.
                    dropout=d.get("hidden_dropout_prob", 0.1),
                    attention_dropout=d.get("attention_probs_dropout_prob", 0.1),
                    classifier_dropout=d.get("classifier_dropout"))
    return config_from_hf


_SHARED = dict(init=init, heads=("classifier", "none"), default_data="sample:sentiment",
               default_output="class-prob", is_decoder=False, token_types=True)

FAMILIES = (
    Family(name="bert", model_types=("bert",), config_from_hf=_config_from_hf("bert", 0),
           forward=_forward(bert_position_ids, bert_head), params_from_hf=bert_params_from_hf,
           hf_prefixes=("bert.",), **_SHARED),
    Family(name="roberta", model_types=("roberta",), config_from_hf=_config_from_hf("roberta", 1),
           forward=_forward(roberta_position_ids, roberta_head), params_from_hf=roberta_params_from_hf,
           hf_prefixes=("roberta.",), reserved_positions=lambda cfg: cfg.pad_token_id + 1, **_SHARED),
)
