"""MoE routers stay frozen in fine-tuning and layer-wise tuning unless asked (issue 13): a
real AdamW update with weight decay on leaves every router bit-identical while the experts
move; `TrainConfig(train_router=True)` trains it."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import ntkfuse
from ntkfuse.compress import compress
from ntkfuse.finetune import TrainConfig
from ntkfuse.finetune.train import steps
from ntkfuse.models import ModelConfig, get_mlp
from ntkfuse.models.blocks import MoEMLP
from ntkfuse.surrogate.tuning import TuneConfig, layerwise_tune


def tiny_mixtral():
    cfg = ModelConfig(family="mixtral", vocab_size=40, hidden=16, intermediate=32, num_layers=2, num_heads=2,
                      num_kv_heads=1, max_positions=32, activation="silu", head="lm", layer_norm_eps=1e-6,
                      num_experts=4, experts_per_token=2, tie_word_embeddings=False)
    return cfg, ntkfuse.init_params(cfg, jax.random.PRNGKey(0))


def lm_batch(cfg, n=4, t=10):
    ids = np.random.default_rng(1).integers(3, cfg.vocab_size, (n, t)).astype(np.int32)
    return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.ones((n, t), jnp.int32),
            "target_mask": jnp.ones((n, t), jnp.int32), "weight": jnp.ones((n,), jnp.float32)}


def _routers(params):
    return [np.asarray(get_mlp(params, l).router) for l in range(len(params["layers"]))]


def _train(cfg, params, batch, **kw):
    tc = TrainConfig(lr=1e-2, weight_decay=0.1, warmup=0.0, clip=1.0, batch_size=4, max_length=10, **kw)
    tx, train_step, _ = steps(cfg, "generation", tc, 4)
    q, state = jax.tree_util.tree_map(jnp.array, params), tx.init(params)
    for _ in range(2):
        q, state, _ = train_step(q, state, batch, None)
    return q


def test_finetuning_leaves_routers_alone_unless_asked():
    cfg, p = tiny_mixtral()
    p = compress(cfg, p, "fusion", [1], 8, jax.random.PRNGKey(0), n_init=1)
    assert isinstance(get_mlp(p, 1), MoEMLP)
    batch = lm_batch(cfg)
    q = _train(cfg, p, batch)
    for a, b in zip(_routers(p), _routers(q)):
        np.testing.assert_array_equal(a, b)
    for l in (0, 1):   # every expert trains
        for e0, e1 in zip(get_mlp(p, l).experts, get_mlp(q, l).experts):
            assert not np.array_equal(np.asarray(e0.w_up), np.asarray(e1.w_up))
    r = _train(cfg, p, batch, train_router=True)
    assert all(not np.array_equal(a, b) for a, b in zip(_routers(p), _routers(r)))


def test_layerwise_tuning_leaves_routers_alone():
    cfg, teacher = tiny_mixtral()
    student = compress(cfg, teacher, "prune", [0, 1], 8, jax.random.PRNGKey(0))
    batch = {k: v for k, v in lm_batch(cfg).items() if k in ("input_ids", "attention_mask")}
    tuned, losses = layerwise_tune(cfg, student, teacher, [batch], [0, 1], TuneConfig(epochs=10, lr=1e-3))
    assert losses[-1] < losses[0]
    for a, b in zip(_routers(student), _routers(tuned)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(np.asarray(get_mlp(student, 0).experts[0].w_up), np.asarray(get_mlp(tuned, 0).experts[0].w_up))
