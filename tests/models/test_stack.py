"""The layer stack gives the same numbers as a Python list, under lax.scan and with
remat: forward outputs (logits, every hidden state, MLP inputs/outputs) and gradients,
on models whose layers mix block kinds and widths."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkfuse
from ntkfuse.models import DenseMLP, FusedMLP, ModelConfig
from ntkfuse.models.stack import layer_runs

FAMILIES = ("bert", "roberta", "gpt2")
STACKS = {"list": {}, "scan": {"scan_layers": True}, "scan+remat": {"scan_layers": True, "remat": True},
          "list+remat": {"remat": True}, "scan+remat-dots": {"scan_layers": True, "remat": "dots"},
          "list+remat-dots": {"remat": "dots"}}
# float32 round-off of one differently fused layer is ~1e-7 relative; scan vs unrolled
# code may reorder a reduction, nothing more.
RTOL = 1e-6


@functools.cache
def mixed_model(family):
    """6 layers: dense D, dense D, dense k, dense k, fused (counts a), fused (counts b), so the
    scan runs are [0, 2), [2, 4), [4, 6): width splits runs, cluster sizes (leaves) do not."""
    cfg = ModelConfig(family=family, vocab_size=50, hidden=16, intermediate=32, num_layers=6, num_heads=2,
                      max_positions=24, activation="gelu_tanh" if family == "gpt2" else "gelu",
                      head="lm" if family == "gpt2" else "classifier", num_labels=3,
                      pad_token_id=1 if family == "roberta" else 0)
    params = ntkfuse.init_params(cfg, jax.random.PRNGKey(0))
    k = 12
    blocks = {}
    for l in (2, 3):
        m = ntkfuse.get_mlp(params, l)
        blocks[l] = DenseMLP(m.w1[:k], m.b1[:k], m.w2[:, :k], m.b2)
    for l, counts in ((4, (1, 2, 3, 4) * 2), (5, (4, 3, 2, 1) * 2)):
        m = ntkfuse.get_mlp(params, l)
        blocks[l] = FusedMLP(m.w1[:8], m.b1[:8], m.w2[:, :8], m.b2, counts=counts)
    return cfg, ntkfuse.replace_mlps(params, blocks)


def batch_of(cfg):
    ids = np.random.default_rng(0).integers(3, cfg.vocab_size, (2, 8))
    mask = np.ones_like(ids)
    mask[1, -3:] = 0
    ids[1, -3:] = cfg.pad_token_id
    return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask)}


def close(a, b, rtol=RTOL):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    assert np.linalg.norm(a - b) <= rtol * max(np.linalg.norm(b), 1e-30), np.linalg.norm(a - b) / np.linalg.norm(b)


def test_layer_runs_split_on_kind_and_width_not_cluster_sizes():
    _, params = mixed_model("bert")
    assert layer_runs(params["layers"]) == [(0, 2), (2, 4), (4, 6)]
    same = [params["layers"][4]] * 3 + [params["layers"][0]]
    assert layer_runs(same) == [(0, 3), (3, 4)]
    # A None bias is a different pytree structure, a dtype a different signature.
    m = ntkfuse.get_mlp(params, 0)
    layers = [params["layers"][0], dict(params["layers"][0], mlp=DenseMLP(m.w1, None, m.w2, m.b2)),
              jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params["layers"][0])]
    assert layer_runs(layers) == [(0, 1), (1, 2), (2, 3)]
    assert layer_runs([]) == []


@pytest.fixture(scope="module", params=FAMILIES)
def reference(request):
    """(cfg, params, batch, list-mode output) per family."""
    cfg, params = mixed_model(request.param)
    batch = batch_of(cfg)
    return cfg, params, batch, ntkfuse.jit_forward(cfg, params, batch, True)


@pytest.mark.parametrize("stack,jit", [("scan", True), ("scan+remat", True), ("list+remat", True), ("scan", False),
                                       ("scan+remat-dots", True)],
                         ids=["scan-jit", "scan+remat-jit", "list+remat-jit", "scan-eager", "scan+remat-dots-jit"])
def test_stack_forward_matches_list(reference, stack, jit):
    cfg, params, batch, ref = reference
    cfg2 = cfg.replace(**STACKS[stack])
    out = (ntkfuse.jit_forward(cfg2, params, batch, True) if jit
           else ntkfuse.forward(cfg2, params, batch, collect=True))
    assert len(out.hidden_states) == cfg.num_layers + 1 and len(out.mlp_inputs) == len(out.mlp_outputs) == 6
    for field in ("logits", "last_hidden", "hidden_states", "mlp_inputs", "mlp_outputs"):
        a, b = getattr(out, field), getattr(ref, field)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
            close(x, y)
    assert out.mlp_outputs[3].shape == ref.mlp_outputs[3].shape


@pytest.mark.parametrize("family", ["bert", "gpt2"])   # RoBERTa's layers are BERT's (one family module)
def test_stack_gradients_match_list(family):
    cfg, params = mixed_model(family)
    batch = batch_of(cfg)

    def grad(c):
        return jax.jit(jax.grad(lambda p: jnp.sum(jnp.square(ntkfuse.forward(c, p, batch).logits))))(params)

    g_ref = grad(cfg)
    for stack in ("scan", "scan+remat", "scan+remat-dots", "list+remat-dots"):
        g = grad(cfg.replace(**STACKS[stack]))
        assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(g_ref)
        assert isinstance(g["layers"], list) and g["layers"][5]["mlp"].counts.shape == (8,)
        for x, y in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref), strict=True):
            close(x, y, rtol=1e-5)


def test_no_collect_output_is_identical_to_collect():
    """Collect mode only adds outputs: the scanned forward's logits do not depend on it."""
    cfg, params = mixed_model("roberta")
    cfg = cfg.replace(scan_layers=True)
    batch = batch_of(cfg)
    a = ntkfuse.jit_forward(cfg, params, batch, False)
    b = ntkfuse.jit_forward(cfg, params, batch, True)
    assert a.hidden_states is None
    close(a.logits, b.logits)
