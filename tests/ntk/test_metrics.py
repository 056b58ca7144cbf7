"""Approximation-error metrics against hand computations."""
from __future__ import annotations

import jax
import numpy as np
import pytest

import ntkfuse
from ntkfuse import ntk
from ntkfuse.models import DenseMLP, replace_mlps


def test_ntk_error_hand_computed():
    K = np.array([[2.0, 1.0], [0.0, 1.0]])
    K2 = np.array([[2.0, 1.0], [3.0, 5.0]])
    e = ntk.ntk_error(K2, K)
    assert e["abs"] == pytest.approx(5.0)
    assert e["rel"] == pytest.approx(5.0 / np.sqrt(6.0))
    with pytest.raises(ntk.MetricError, match="shapes differ"):
        ntk.ntk_error(K, np.zeros((3, 3)))


@pytest.fixture(scope="module")
def pair():
    cfg = ntkfuse.ModelConfig(family="bert", vocab_size=30, hidden=8, intermediate=16, num_layers=3, num_heads=2,
                              max_positions=16, num_labels=2)
    p = ntkfuse.init_params(cfg, jax.random.PRNGKey(0))
    m = p["layers"][1]["mlp"]
    new = replace_mlps(p, {1: DenseMLP(m.w1 * 20.0, m.b1 + 1.0, m.w2 * 20.0 + 0.1, m.b2)})
    rng = np.random.default_rng(0)
    batches = []
    for lengths in ([5, 2, 4], [3, 6]):
        t = 6
        ids = np.zeros((len(lengths), t), np.int32)
        mask = np.zeros_like(ids)
        for i, n in enumerate(lengths):
            ids[i, :n] = rng.integers(1, 30, n)
            mask[i, :n] = 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    return cfg, p, new, batches


def _hand(cfg, p, new, batches, layer):
    dists, logit_d = [], []
    for b in batches:
        a = ntkfuse.jit_forward(cfg, p, b, True)
        c = ntkfuse.jit_forward(cfg, new, b, True)
        ha, hc = np.asarray(a.hidden_states[layer]), np.asarray(c.hidden_states[layer])
        for i in range(b["input_ids"].shape[0]):
            for t in range(b["input_ids"].shape[1]):
                if b["attention_mask"][i, t]:
                    dists.append(np.sqrt(np.sum((hc[i, t] - ha[i, t]) ** 2)))
            logit_d.append(np.linalg.norm(np.asarray(c.logits[i]) - np.asarray(a.logits[i])))
    return np.mean(dists), np.mean(logit_d)


def test_output_error_hand_computed_over_all_batches(pair):
    cfg, p, new, batches = pair
    got = ntk.output_error(cfg, p, new, batches)
    assert got["layer_index"] == 2       # default: the output of layer 1, the last changed one
    assert got["tokens"] == 5 + 2 + 4 + 3 + 6
    h, lg = _hand(cfg, p, new, batches, 2)
    assert got["layer"] == pytest.approx(h, rel=1e-5) and got["layer"] > 0
    assert got["logits"] == pytest.approx(lg, rel=1e-5) and got["logits"] > 0
    # token-weighted over all batches, not the last batch's mean
    last = ntk.output_error(cfg, p, new, batches[-1:])
    assert last["layer"] == pytest.approx(_hand(cfg, p, new, batches[-1:], 2)[0], rel=1e-5)
    assert abs(last["layer"] - got["layer"]) > 1e-6
    # an explicit layer; before the change the error is exactly zero
    assert ntk.output_error(cfg, p, new, batches, layer=1)["layer"] == 0.0
    assert ntk.output_error(cfg, p, new, batches, layer=3)["layer"] == pytest.approx(
        _hand(cfg, p, new, batches, 3)[0], rel=1e-5)
    with pytest.raises(ntk.MetricError, match="out of range"):
        ntk.output_error(cfg, p, new, batches, layer=4)
    assert ntk.changed_layers(p, new) == [1]
