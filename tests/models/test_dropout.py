"""Dropout in the forward (training): only with an `rng` key, at HF's places, inverted
(unbiased) scaling, deterministic per key, the same masks under list and scan."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkfuse
from ntkfuse.models import LinearMLP, ModelConfig
from ntkfuse.models.layers import dropout

FAMILIES = ("bert", "roberta", "gpt2")
# Every dropout rate of the config, off.
OFF = {"dropout": 0.0, "attention_dropout": 0.0, "embed_dropout": 0.0, "classifier_dropout": 0.0}


@functools.cache
def model(family, num_layers=2):
    cfg = ModelConfig(family=family, vocab_size=50, hidden=16, intermediate=32, num_layers=num_layers, num_heads=2,
                      max_positions=24, activation="gelu_tanh" if family == "gpt2" else "gelu",
                      head="lm" if family == "gpt2" else "classifier", num_labels=3,
                      pad_token_id=1 if family == "roberta" else 0)
    return cfg, ntkfuse.init_params(cfg, jax.random.PRNGKey(0))


def batch_of(cfg):
    ids = np.random.default_rng(0).integers(3, cfg.vocab_size, (2, 8))
    return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.ones((2, 8), jnp.int32)}


def run(cfg, params, batch, rng=None):
    return jax.jit(ntkfuse.forward, static_argnums=(0, 3))(cfg, params, batch, True, rng=rng)


def leaves(out):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(out)]


def test_dropout_function_is_inverted_and_unbiased():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 64)), jnp.float32)
    assert dropout(x, 0.3, None) is x and dropout(x, 0.0, jax.random.PRNGKey(0)) is x
    y = np.asarray(dropout(x, 0.25, jax.random.PRNGKey(1)))
    kept = y != 0
    np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
    assert abs(1 - kept.mean() - 0.25) < 0.06
    mean = np.asarray(jax.vmap(lambda k: dropout(x, 0.25, k))(jax.random.split(jax.random.PRNGKey(2), 4000)).mean(0))
    assert np.linalg.norm(mean - x) / np.linalg.norm(x) < 0.02


@pytest.mark.parametrize("family", FAMILIES)
def test_rng_with_zero_rates_is_bit_identical_to_no_rng(family):
    cfg, params = model(family)
    cfg = cfg.replace(**OFF)
    batch = batch_of(cfg)
    for a, b in zip(leaves(run(cfg, params, batch)), leaves(run(cfg, params, batch, jax.random.PRNGKey(5))),
                    strict=True):
        np.testing.assert_array_equal(a, b)


# Each site on its own: the rate that switches it on, and the first output it changes.
SITES = {"embed": ({"embed_dropout": 0.3}, "hidden_states", 0),
         "attention": ({"attention_dropout": 0.3}, "hidden_states", 1),
         "residual": ({"dropout": 0.3}, "hidden_states", 1),
         "classifier": ({"classifier_dropout": 0.3}, "logits", None)}


@pytest.mark.parametrize("family,site", [(f, s) for f in FAMILIES for s in SITES
                                         if not (f == "gpt2" and s == "classifier")])   # no dropout in GPT-2's LM head
def test_each_site_changes_outputs_deterministically(family, site):
    cfg, params = model(family)
    rates, field, index = SITES[site]
    cfg = cfg.replace(**{**OFF, **rates})
    batch = batch_of(cfg)
    ref = run(cfg, params, batch)
    a = run(cfg, params, batch, jax.random.PRNGKey(1))
    b = run(cfg, params, batch, jax.random.PRNGKey(1))
    c = run(cfg, params, batch, jax.random.PRNGKey(2))
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)

    def pick(o):
        v = getattr(o, field)
        return np.asarray(v if index is None else v[index])

    assert not np.allclose(pick(a), pick(ref)) and not np.allclose(pick(a), pick(c))
    if index is not None and index > 0:   # outputs before the site are untouched
        np.testing.assert_array_equal(np.asarray(a.hidden_states[index - 1]), np.asarray(ref.hidden_states[index - 1]))


@pytest.mark.parametrize("family", FAMILIES)
def test_scan_gives_the_same_dropout_masks(family):
    cfg, params = model(family, num_layers=3)
    cfg = cfg.replace(dropout=0.2, attention_dropout=0.1)
    batch = batch_of(cfg)
    key = jax.random.PRNGKey(7)
    a = run(cfg, params, batch, key)
    b = run(cfg.replace(scan_layers=True, remat=True), params, batch, key)
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("stack", [{"remat": "dots"}, {"scan_layers": True, "remat": "dots"}, {"remat": True}],
                         ids=["remat-dots", "scan+remat-dots", "remat"])
def test_remat_recomputes_the_same_dropout_masks(family, stack):
    """Under remat the backward pass recomputes the masks from the key: the gradients with
    dropout on equal the stored-activation ones (a different mask would change them)."""
    cfg, params = model(family, num_layers=3)
    cfg = cfg.replace(dropout=0.2, attention_dropout=0.1)
    batch = batch_of(cfg)
    key = jax.random.PRNGKey(7)

    def grads(c, k):
        return jax.jit(jax.grad(lambda p: jnp.sum(jnp.square(ntkfuse.forward(c, p, batch, rng=k).logits))))(params)

    ref = leaves(grads(cfg, key))
    for x, y in zip(leaves(grads(cfg.replace(**stack), key)), ref, strict=True):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6)
    other = leaves(grads(cfg.replace(**stack), jax.random.PRNGKey(8)))
    assert not all(np.allclose(x, y) for x, y in zip(other, ref))


def _mean_gap(cfg, params, batch, index, n):
    """‖mean over n keys of hidden_states[index] − the no-dropout one‖, relative to the part
    dropout acts on (the layer's update ref − hidden_states[index − 1]; all of it at index 0)."""
    out = run(cfg, params, batch)
    ref = np.asarray(out.hidden_states[index])
    base = np.asarray(out.hidden_states[index - 1]) if index else 0.0
    keys = jax.random.split(jax.random.PRNGKey(3), n)
    f = jax.jit(jax.vmap(lambda k: ntkfuse.forward(cfg, params, batch, True, rng=k).hidden_states[index]))
    return np.linalg.norm(np.asarray(f(keys)).mean(0) - ref) / np.linalg.norm(ref - base)


@pytest.mark.parametrize("site", ["embed", "attention", "residual"])
def test_mean_over_keys_approaches_the_no_dropout_output(site):
    """Inverted dropout is unbiased where the output is linear in the mask: the embeddings
    (hidden_states[0]); a GPT-2 layer whose MLP is zero (h + attention, linear in the
    attention-probability mask); a GPT-2 layer whose attention output is zero (h + dropout(MLP)).
    Layer 0 of two: GPT-2's last hidden state is after ln_f, not linear in anything."""
    cfg, params = model("gpt2")
    cfg = cfg.replace(**{**OFF, **SITES[site][0]})
    if site == "attention":
        params = ntkfuse.replace_mlps(params, {0: LinearMLP(jnp.zeros((16, 16)), None)})
    if site == "residual":
        zero = {"w": jnp.zeros((16, 16)), "b": jnp.zeros((16,))}
        layer0 = dict(params["layers"][0], attn=dict(params["layers"][0]["attn"], out=zero))
        params = {**params, "layers": [layer0, *params["layers"][1:]]}
    index = 0 if site == "embed" else 1
    few, many = _mean_gap(cfg, params, batch_of(cfg), index, 20), _mean_gap(cfg, params, batch_of(cfg), index, 2000)
    assert many < 0.05 and many < few / 3, (few, many)
