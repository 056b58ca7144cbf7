"""Switch Transformers (HF `SwitchTransformersForConditionalGeneration`, model_type
"switch_transformers"): a T5-style encoder-decoder whose sparse layers have a top-1 routed
Mixture-of-Experts MLP (docs/moe.md, "The Switch family").

As HF computes it (transformers 5):
- T5 LayerNorm (RMS: no mean, no bias; float32 statistics), pre-norm residual sub-layers:
  self-attention, (decoder) cross-attention over the encoder output, MLP;
- attention without the 1/sqrt(d) scaling, plus a relative position bias: bucketed relative
  distances (`relative_buckets`) looked up in a (buckets, heads) table that only the first
  layer of each stack has, computed once and shared by every layer of the stack; bidirectional
  buckets in the encoder, causal ones in the decoder; none in cross-attention;
- layer i of a stack with sparse step s (= num_layers // num_sparse_layers) is sparse iff
  i % s == 1 or s == 1 (s = 0: none) — HF's rule, so with s = 2 the odd layers are sparse;
  a sparse MLP is an `MoEMLP` with rule "switch" (top-1, unnormalised probability, expert
  capacity per sequence), every other MLP a bias-free `DenseMLP` (T5's wi, wo);
- tied (every released checkpoint): one embedding table feeds both stacks and is the LM head,
  the decoder output scaled by d_model**-0.5 first; untied (tie_word_embeddings=False): transformers
  5 unties the stacks' tables too (encoder.embed_tokens, decoder.embed_tokens, lm_head, no
  scaling; `shared` is then unused); no position embeddings.

params: {"embed": {"word", "decoder_word" (untied only)}, "rel_bias": {"encoder", "decoder"} ((buckets, heads) each),
"layers": [encoder layers..., decoder layers...], "ln_encoder": {"scale"}, "ln_f": {"scale"},
"lm_head": {"w"} (untied only)}. A layer dict: "attn" ({"q","k","v","o": {"w"}}), "ln_attn",
(decoder) "cross_attn", "ln_cross", "mlp", "ln_mlp". MLP "layer i" is params["layers"][i]: the
encoder's layers are 0..Le-1, the decoder's Le..Le+Ld-1 (cfg.encoder_layers = Le).

Batch: "input_ids", "attention_mask" (encoder), "decoder_input_ids", "decoder_attention_mask"
(decoder; HF's shift_right of the labels: the decoder start token, then the target). Dropout
(only with `rng`): embeddings, attention probabilities, each sub-layer's output before the
residual and each stack's output, as HF; not inside the MLP (no ntkfuse block has that site).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ..blocks import DenseMLP, MoEMLP, apply_mlp
from ..layers import attention_bias, dropout, linear
from ..outputs import ModelOutput
from ..stack import run_layers
from .common import ATTN_OUT, ATTN_PROBS, EMBED, LAYERS, MLP_OUT, hf_activation, normal, site_key
from .llama import rms_norm
from .registry import Family, UnsupportedModelError

# Dropout sites beyond common's: cross-attention (probabilities, output); streams: decoder layers,
# decoder embeddings, each stack's output.
CROSS_PROBS, CROSS_OUT = 3, 4
DEC_LAYERS, DEC_EMBED, ENC_FINAL, DEC_FINAL = 3, 4, 5, 6
# No position limit (relative positions); check_batch's bound.
MAX_POSITIONS = 1 << 20


# --------------------------------------------------------------------------- layers


def relative_buckets(q_len: int, k_len: int, bidirectional: bool, num_buckets: int, max_distance: int) -> np.ndarray:
    """(q_len, k_len) int32 bucket of each relative distance key − query, as HF (Mesh TensorFlow):
    bidirectional splits the buckets between the two signs; half of a side's buckets are exact
    distances, the rest logarithmic up to max_distance (farther ones share the last bucket); causal
    (decoder) buckets only look back. Computed on the host (shapes are static) in float32 as HF."""
    rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
    out = np.zeros(rel.shape, np.int64)
    if bidirectional:
        num_buckets //= 2
        out += (rel > 0).astype(np.int64) * num_buckets
        n = np.abs(rel)
    else:
        n = -np.minimum(rel, 0)
    exact = num_buckets // 2
    with np.errstate(divide="ignore"):
        large = np.log(n.astype(np.float32) / np.float32(exact)) / np.float32(math.log(max_distance / exact))
        large = exact + np.nan_to_num(large * np.float32(num_buckets - exact), neginf=0.0).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    out += np.where(n < exact, n, large)
    return out.astype(np.int32)


def position_bias(table, q_len: int, k_len: int, bidirectional: bool, cfg) -> jax.Array:
    """(1, heads, q_len, k_len) float32 bias from the (buckets, heads) table."""
    b = relative_buckets(q_len, k_len, bidirectional, cfg.relative_attention_num_buckets,
                         cfg.relative_attention_max_distance)
    return jnp.transpose(table[jnp.asarray(b)].astype(jnp.float32), (2, 0, 1))[None]


def t5_attention(cfg, p: dict, x, kv, bias, key=None):
    """Multi-head attention of queries x over keys/values kv, scores NOT scaled by 1/sqrt(d)
    (T5 folds it into the init), plus `bias` (position bias + mask, float32)."""
    b, t, _ = x.shape
    s = kv.shape[1]
    H, hd = cfg.num_heads, cfg.head_dim
    q = linear(p["q"], x).reshape(b, t, H, hd)
    k = linear(p["k"], kv).reshape(b, s, H, hd)
    v = linear(p["v"], kv).reshape(b, s, H, hd)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) + bias
    probs = dropout(jax.nn.softmax(scores, axis=-1).astype(x.dtype), cfg.attention_dropout, key)
    return linear(p["o"], jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, H * hd))


def _layer(cfg, self_bias, enc=None, cross_bias=None, collect=False):
    """One stack layer for `stack.run_layers`; with `enc` (encoder output) the decoder's, with
    cross-attention between self-attention and the MLP."""
    eps = cfg.layer_norm_eps

    def layer(lp, h, key):
        x = rms_norm(lp["ln_attn"], h, eps)
        a = t5_attention(cfg, lp["attn"], x, x, self_bias, site_key(key, ATTN_PROBS))
        h = h + dropout(a, cfg.dropout, site_key(key, ATTN_OUT))
        if enc is not None:
            c = t5_attention(cfg, lp["cross_attn"], rms_norm(lp["ln_cross"], h, eps), enc, cross_bias,
                             site_key(key, CROSS_PROBS))
            h = h + dropout(c, cfg.dropout, site_key(key, CROSS_OUT))
        x = rms_norm(lp["ln_mlp"], h, eps)
        m = apply_mlp(lp["mlp"], x, cfg.activation)
        h = h + dropout(m, cfg.dropout, site_key(key, MLP_OUT))
        return h, ((h, x, m) if collect else None)

    return layer


def _stack_states(h0, h, aux):
    """HF's hidden states of one stack: embeddings, each layer's output, the last replaced by the
    final norm's output `h`."""
    hs = [a[0] for a in aux]
    return (h0, *hs[:-1], h)


def forward(cfg, params: dict, batch: dict, collect: bool = False, rng=None) -> ModelOutput:
    ids, dids = batch["input_ids"], batch.get("decoder_input_ids")
    if dids is None:
        raise ValueError("a switch (encoder-decoder) batch needs decoder_input_ids beside input_ids")
    mask = batch.get("attention_mask")
    mask = jnp.ones_like(ids) if mask is None else mask
    dmask = batch.get("decoder_attention_mask")
    dmask = jnp.ones_like(dids) if dmask is None else dmask
    Le, eps = cfg.encoder_layers, cfg.layer_norm_eps
    word = params["embed"]["word"]
    S, T = ids.shape[1], dids.shape[1]

    enc_layers, dec_layers = params["layers"][:Le], params["layers"][Le:]
    kw = dict(scan=cfg.scan_layers, remat=cfg.remat)
    # encoder
    h0 = word[ids]
    h = dropout(h0, cfg.dropout, site_key(rng, EMBED))
    bias = position_bias(params["rel_bias"]["encoder"], S, S, True, cfg) + attention_bias(mask, causal=False)
    h, aux_e = run_layers(_layer(cfg, bias, collect=collect), enc_layers, h, rng=site_key(rng, LAYERS), **kw)
    enc = rms_norm(params["ln_encoder"], h, eps)
    enc_states = _stack_states(h0, enc, aux_e) if collect else None
    enc = dropout(enc, cfg.dropout, site_key(rng, ENC_FINAL))
    # decoder
    g0 = params["embed"].get("decoder_word", word)[dids]
    g = dropout(g0, cfg.dropout, site_key(rng, DEC_EMBED))
    self_bias = position_bias(params["rel_bias"]["decoder"], T, T, False, cfg) + attention_bias(dmask, causal=True)
    cross_bias = attention_bias(mask, causal=False)      # (B, 1, 1, S): padded encoder tokens; no position bias
    g, aux_d = run_layers(_layer(cfg, self_bias, enc, cross_bias, collect), dec_layers, g,
                          rng=site_key(rng, DEC_LAYERS), **kw)
    g = rms_norm(params["ln_f"], g, eps)
    dec_states = _stack_states(g0, g, aux_d) if collect else None
    g = dropout(g, cfg.dropout, site_key(rng, DEC_FINAL))
    logits = None
    if cfg.head == "lm":
        if cfg.tie_word_embeddings:   # HF (Mesh TF): rescale before the tied projection
            logits = (g * (cfg.hidden ** -0.5)) @ word.T.astype(g.dtype)
        else:
            logits = g @ params["lm_head"]["w"].T.astype(g.dtype)
    if not collect:
        return ModelOutput(logits, g)
    aux = list(aux_e) + list(aux_d)
    return ModelOutput(logits, g, enc_states + dec_states, tuple(a[1] for a in aux), tuple(a[2] for a in aux))


# --------------------------------------------------------------------------- init and weights


def sparse_layer_indices(num_layers: int, num_sparse: int) -> tuple:
    """Layers (0-based, within one stack) HF makes sparse: step s = num_layers // num_sparse (s = num_layers
    when num_sparse is 0, HF's 'hack'), layer i sparse iff s > 0 and (i % s == 1 or s == 1)."""
    s = num_layers // num_sparse if num_sparse > 0 else num_layers
    return tuple(i for i in range(num_layers) if s > 0 and (i % s == 1 or s == 1))


def _moe(cfg, router, experts):
    return MoEMLP(router, tuple(experts), 1, "switch", cfg.expert_capacity)


def init(cfg, key, dtype=jnp.float32) -> dict:
    d, D, E, L, Le = cfg.hidden, cfg.intermediate, cfg.num_experts or 0, cfg.num_layers, cfg.encoder_layers
    keys = iter(jax.random.split(key, 4 + 10 * L))
    ones = lambda: {"scale": jnp.ones((d,), dtype)}  # noqa: E731
    attn = lambda: {n: {"w": normal(next(keys), (d, d), dtype)} for n in "qkvo"}  # noqa: E731

    def mlp(i):
        if i not in cfg.sparse_layers:
            return DenseMLP(normal(next(keys), (D, d), dtype), None, normal(next(keys), (d, D), dtype), None)
        ks = jax.random.split(next(keys), 2 * E)
        return _moe(cfg, normal(next(keys), (E, d), dtype),
                    [DenseMLP(normal(ks[2 * e], (D, d), dtype), None, normal(ks[2 * e + 1], (d, D), dtype), None)
                     for e in range(E)])

    def layer(i):
        lp = {"attn": attn(), "ln_attn": ones(), "mlp": mlp(i), "ln_mlp": ones()}
        if i >= Le:
            lp.update(cross_attn=attn(), ln_cross=ones())
        return lp

    nb, H = cfg.relative_attention_num_buckets, cfg.num_heads
    embed = {"word": normal(next(keys), (cfg.vocab_size, d), dtype)}
    if not cfg.tie_word_embeddings:
        embed["decoder_word"] = normal(next(keys), (cfg.vocab_size, d), dtype)
    params = {"embed": embed,
              "rel_bias": {"encoder": normal(next(keys), (nb, H), dtype), "decoder": normal(next(keys), (nb, H), dtype)},
              "layers": [layer(i) for i in range(L)], "ln_encoder": ones(), "ln_f": ones()}
    if not cfg.tie_word_embeddings:
        params["lm_head"] = {"w": normal(next(keys), (cfg.vocab_size, d), dtype)}
    return params


def params_from_hf(cfg, tensors, take) -> dict:
    """HF names: `{encoder,decoder}.block.{i}.layer.{j}...` (j: 0 self-attention, decoder 1
    cross-attention, then the feed-forward), `shared.weight` or a stack's own
    `{encoder,decoder}.embed_tokens.weight`, `lm_head.weight` when untied."""
    d, D, E, Le = cfg.hidden, cfg.intermediate, cfg.num_experts or 0, cfg.encoder_layers
    nb, H = cfg.relative_attention_num_buckets, cfg.num_heads
    attn = lambda pre: {n: {"w": take(f"{pre}.{n}.weight", (d, d))} for n in "qkvo"}  # noqa: E731
    ln = lambda pre: {"scale": take(f"{pre}.layer_norm.weight", (d,))}  # noqa: E731

    def mlp(i, pre):
        if i not in cfg.sparse_layers:
            return DenseMLP(take(f"{pre}.mlp.wi.weight", (D, d)), None, take(f"{pre}.mlp.wo.weight", (d, D)), None)
        x = f"{pre}.mlp.experts.expert_"
        return _moe(cfg, take(f"{pre}.mlp.router.classifier.weight", (E, d)),
                    [DenseMLP(take(f"{x}{e}.wi.weight", (D, d)), None, take(f"{x}{e}.wo.weight", (d, D)), None)
                     for e in range(E)])

    layers = []
    for i in range(cfg.num_layers):
        dec = i >= Le
        pre = f"{'decoder' if dec else 'encoder'}.block.{i - Le if dec else i}.layer"
        lp = {"attn": attn(f"{pre}.0.SelfAttention"), "ln_attn": ln(f"{pre}.0")}
        ff = f"{pre}.{2 if dec else 1}"
        if dec:
            lp.update(cross_attn=attn(f"{pre}.1.EncDecAttention"), ln_cross=ln(f"{pre}.1"))
        lp.update(mlp=mlp(i, ff), ln_mlp=ln(ff))
        layers.append(lp)
    def table(stack):   # a stack's own table when saved (transformers 5 unties them with the head), else shared
        name = f"{stack}.embed_tokens.weight"
        return take(name if name in tensors else "shared.weight", (cfg.vocab_size, d))

    embed = {"word": table("encoder")} if cfg.tie_word_embeddings else {"word": table("encoder"),
                                                                        "decoder_word": table("decoder")}
    rel = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    params = {"embed": embed,
              "rel_bias": {"encoder": take(f"encoder.{rel}", (nb, H)), "decoder": take(f"decoder.{rel}", (nb, H))},
              "layers": layers, "ln_encoder": {"scale": take("encoder.final_layer_norm.weight", (d,))},
              "ln_f": {"scale": take("decoder.final_layer_norm.weight", (d,))}}
    if not cfg.tie_word_embeddings:
        params["lm_head"] = {"w": take("lm_head.weight", (cfg.vocab_size, d))}
    return params


def config_from_hf(d, *, head=None, num_labels=None, name="") -> dict:
    if d.get("router_bias"):
        raise UnsupportedModelError("switch_transformers with router_bias=True is not supported (the MoE router "
                                    "is bias-free)")
    if d.get("router_dtype", "float32") != "float32":
        raise UnsupportedModelError(f"switch_transformers router_dtype {d['router_dtype']!r} is not supported "
                                    "(ntkfuse routes in float32, HF's default)")
    act = d.get("dense_act_fn", "relu")
    if act.startswith("gated-") or d.get("is_gated_act"):
        raise UnsupportedModelError(f"switch_transformers with a gated feed-forward ({act!r}) is not supported")
    H, dkv, dm = d["num_heads"], d.get("d_kv", d["d_model"] // d["num_heads"]), d["d_model"]
    if H * dkv != dm:
        raise UnsupportedModelError(f"switch_transformers with num_heads × d_kv ({H} × {dkv}) ≠ d_model {dm} "
                                    "is not supported")
    Le = int(d["num_layers"])
    Ld = int(d.get("num_decoder_layers") or Le)
    enc = sparse_layer_indices(Le, int(d.get("num_sparse_encoder_layers", 3)))
    dec = sparse_layer_indices(Ld, int(d.get("num_sparse_decoder_layers", 3)))
    E = int(d.get("num_experts", 8))
    start = d.get("decoder_start_token_id")
    return dict(family="switch", vocab_size=d["vocab_size"], hidden=dm, intermediate=d["d_ff"], num_layers=Le + Ld,
                num_heads=H, max_positions=MAX_POSITIONS, activation=hf_activation(act),
                layer_norm_eps=d.get("layer_norm_epsilon", 1e-6), type_vocab_size=0,
                pad_token_id=d.get("pad_token_id") or 0, num_labels=num_labels or 2, head=head or "lm", name=name,
                dropout=float(d.get("dropout_rate", 0.1)), attention_dropout=float(d.get("dropout_rate", 0.1)),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
                num_experts=E, experts_per_token=1, encoder_layers=Le,
                sparse_layers=enc + tuple(Le + i for i in dec), expert_capacity=int(d.get("expert_capacity", 64)),
                relative_attention_num_buckets=int(d.get("relative_attention_num_buckets", 32)),
                relative_attention_max_distance=int(d.get("relative_attention_max_distance", 128)),
                decoder_start_token_id=int(start if start is not None else (d.get("pad_token_id") or 0)))


FAMILIES = (
    Family(name="switch", model_types=("switch_transformers",), config_from_hf=config_from_hf, init=init,
           forward=forward, params_from_hf=params_from_hf, heads=("lm", "none"), default_data="sample:webnlg",
           default_output="target-logprob", is_decoder=False, token_types=False, hf_prefixes=()),
)
