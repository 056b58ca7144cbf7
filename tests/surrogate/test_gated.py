"""Surrogates of gated (SwiGLU) and MoE teachers: every kind initialises with the right shapes
and kind, one fit lowers the held-out loss (stacked over layers), fusion's counts stay fixed,
an MoE router never moves; sensitivity (next-token KL) on a tiny Llama and a tiny Mixtral."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkfuse
from ntkfuse.models import ModelConfig
from ntkfuse.models.blocks import (DenseMLP, FusedGatedMLP, GatedMLP, LinearMLP, LowRankLinearMLP, MoEMLP,
                                   activation_fn)
from ntkfuse.surrogate import (FitConfig, collect_pairs, evaluate_blocks, fit_blocks, fit_grouped, init_surrogates,
                               layer_sensitivity, sensitivity_options)
from ntkfuse.surrogate.build import block_dim

d, D, k = 12, 32, 8
ACT = "silu"
FC = FitConfig(steps=60, batch_size=64, lr=3e-3, warmup_steps=5, holdout=0.2, eval_every=20, patience=0,
               progress=False)


def _gated(key, scale=0.4):
    k1, k2, k3 = jax.random.split(key, 3)
    return GatedMLP(scale * jax.random.normal(k1, (D, d)), scale * jax.random.normal(k2, (D, d)),
                    scale * jax.random.normal(k3, (d, D)))


def _moe(key, E=3, top_k=2):
    kr, ke = jax.random.split(key)
    return MoEMLP(jax.random.normal(kr, (E, d)), tuple(_gated(jax.random.fold_in(ke, e)) for e in range(E)), top_k)


def _pairs(teachers, n=400, seed=0):
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (len(teachers), n, d)))
    act = activation_fn(ACT)
    y = np.stack([np.asarray(t(jnp.asarray(x[i]), act)) for i, t in enumerate(teachers)])
    return x, y


@pytest.fixture(scope="module")
def gated_data():
    teachers = [_gated(jax.random.PRNGKey(i)) for i in range(2)]
    return teachers, *_pairs(teachers)


@pytest.fixture(scope="module")
def moe_data():
    teachers = [_moe(jax.random.PRNGKey(10 + i)) for i in range(2)]
    return teachers, *_pairs(teachers, seed=1)


def _fit_lowers_loss(init, x, y, slack=0.0):
    before = evaluate_blocks(init, x, y, ACT)
    res = fit_blocks(init, x, y, FC, ACT)
    after = evaluate_blocks(res.blocks, x, y, ACT)
    assert np.all(np.isfinite(after)) and np.all(after < before * (1 + slack)), (before, after)
    return res.blocks


def test_block_dim_from_the_protocol(gated_data, moe_data):
    assert block_dim(gated_data[0][0]) == d and block_dim(moe_data[0][0]) == d
    assert block_dim(DenseMLP(jnp.zeros((D, d)), None, jnp.zeros((d, D)), None)) == d
    assert block_dim(LinearMLP(jnp.zeros((d, d)), jnp.zeros((d,)))) == d


@pytest.mark.parametrize("kind", ["linear", "linear_sgd", "low_rank_linear"])
def test_linear_kinds_of_a_gated_teacher(gated_data, kind):
    teachers, x, y = gated_data
    init = init_surrogates(kind, teachers, jax.random.PRNGKey(0), rank=4, x=x, y=y)
    want = LowRankLinearMLP if kind == "low_rank_linear" else LinearMLP
    assert all(type(b) is want for b in init)
    if kind == "linear":
        ref = init_surrogates("linear_sgd", teachers, jax.random.PRNGKey(0))   # d from the teacher, no x
        assert ref[0].w.shape == init[0].w.shape == (d, d)
        return
    # the SVD of the ridge solution is already close to the best rank-4 linear map: no worse
    _fit_lowers_loss(init, x, y, slack=1e-3 if kind == "low_rank_linear" else 0.0)


@pytest.mark.parametrize("method", ["random", "fusion", "cluster", "prune", "sketch", "mmd"])
def test_bottlenecks_of_a_gated_teacher(gated_data, method):
    teachers, x, y = gated_data
    opts = {"n_init": 1} if method in ("fusion", "cluster") else {"steps": 20} if method == "mmd" else {}
    init = init_surrogates("bottleneck", teachers, jax.random.PRNGKey(1), width=k, method=method, activation=ACT,
                           **opts)
    want = FusedGatedMLP if method == "fusion" else GatedMLP
    assert all(type(b) is want and b.width == k for b in init)
    assert all((b.w_gate.shape, b.w_up.shape, b.w_down.shape) == ((k, d), (k, d), (d, k)) for b in init)
    fitted = _fit_lowers_loss(init, x, y)
    assert all(type(b) is want for b in fitted)
    if method == "fusion":
        assert all(np.array_equal(b.counts, i.counts) for b, i in zip(fitted, init, strict=True))
        assert float(init[0].counts.sum()) == D


def test_svd_bottleneck_of_a_gated_teacher_fits(gated_data):
    """svd of a gated teacher is a LowRankGatedMLP at the width-k parameter budget; fitting trains it."""
    from ntkfuse.models.blocks import LowRankGatedMLP
    teachers, x, y = gated_data
    init = init_surrogates("bottleneck", teachers, jax.random.PRNGKey(0), width=k, method="svd", activation=ACT)
    assert all(type(b) is LowRankGatedMLP for b in init)
    assert all(b.param_count() <= 3 * k * d for b in init)
    fitted = _fit_lowers_loss(init, x, y)
    assert all(type(b) is LowRankGatedMLP for b in fitted)


def test_fusion_fitted_grouped_with_different_counts(gated_data):
    teachers, x, y = gated_data
    init = init_surrogates("bottleneck", teachers, jax.random.PRNGKey(2), width=k, method="fusion", activation=ACT,
                           n_init=1)
    assert all(float(b.counts.sum()) == D for b in init)   # per-layer counts, stacked as a fixed (L, k) array
    assert not np.array_equal(init[0].counts, init[1].counts)
    out, _ = fit_grouped(init, x, y, FC, ACT)
    assert all(np.asarray(b.counts).tobytes() == np.asarray(i.counts).tobytes() for b, i in zip(out, init, strict=True))


@pytest.mark.parametrize("method", ["random", "fusion", "prune"])
def test_moe_bottlenecks_expert_wise_router_frozen(moe_data, method):
    teachers, x, y = moe_data
    opts = {"n_init": 1} if method == "fusion" else {}
    init = init_surrogates("bottleneck", teachers, jax.random.PRNGKey(3), width=k, method=method, activation=ACT,
                           **opts)
    want = FusedGatedMLP if method == "fusion" else GatedMLP
    for b, t in zip(init, teachers):
        assert type(b) is MoEMLP and b.top_k == t.top_k and b.expert_widths == (k,) * t.num_experts
        assert all(type(e) is want for e in b.experts)
        np.testing.assert_array_equal(np.asarray(b.router), np.asarray(t.router))
    fitted = _fit_lowers_loss(init, x, y)
    for b, i in zip(fitted, init):
        np.testing.assert_array_equal(np.asarray(b.router), np.asarray(i.router))   # bit-identical
        assert not np.array_equal(np.asarray(b.experts[0].w_down), np.asarray(i.experts[0].w_down))
        if method == "fusion":
            assert all(np.array_equal(e.counts, f.counts) for e, f in zip(b.experts, i.experts, strict=True))


def test_moe_linear_surrogate_replaces_the_layer(moe_data):
    teachers, x, y = moe_data
    init = init_surrogates("linear_sgd", teachers, jax.random.PRNGKey(0))
    assert all(type(b) is LinearMLP and b.w.shape == (d, d) for b in init)
    _fit_lowers_loss(init, x, y)


# ---------------------------------------------------------------- sensitivity on decoders

def _decoder(family):
    extra = dict(num_experts=4, experts_per_token=2) if family == "mixtral" else {}
    cfg = ModelConfig(family=family, vocab_size=40, hidden=16, intermediate=32, num_layers=2, num_heads=2,
                      num_kv_heads=1, max_positions=32, activation="silu", head="lm", layer_norm_eps=1e-6,
                      tie_word_embeddings=False, **extra)
    params = ntkfuse.init_params(cfg, jax.random.PRNGKey(0))
    params = ntkfuse.replace_mlps(params, {l: jax.tree.map(lambda a: a * 20.0, ntkfuse.get_mlp(params, l))
                                           for l in range(2)})
    ids = np.random.default_rng(1).integers(3, 40, (3, 10)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    return cfg, params, [{"input_ids": np.where(mask, ids, 0).astype(np.int32), "attention_mask": mask}]


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_sensitivity_on_a_tiny_decoder(family):
    cfg, params, batches = _decoder(family)
    rows = layer_sensitivity(cfg, params, batches, [0, 1], [4, 16], method="prune")
    assert len(rows) == 4 and all(r["kl"] >= 0 and np.isfinite(r["kl"]) for r in rows)
    assert any(r["kl"] > 1e-6 for r in rows)
    # identity replacements: the layer by itself, and fusion with every neuron its own cluster
    same = layer_sensitivity(cfg, params, batches, [0, 1], [32], replace=lambda c, p, l, w, key: p)
    assert all(r["kl"] == 0.0 and r["output_error"] == 0.0 for r in same)
    fused = layer_sensitivity(cfg, params, batches, [1], [32], method="fusion", n_init=1)
    assert abs(fused[0]["kl"]) < 1e-6 and fused[0]["output_error"] < 1e-4 * (1 + rows[0]["output_error"])
    opts = sensitivity_options(cfg, params, rows)
    assert sorted(opts) == [0, 1] and all(o[-1].loss == 0 for o in opts.values())


def test_surrogates_fitted_on_collected_llama_pairs():
    cfg, params, batches = _decoder("llama")
    x, y = collect_pairs(cfg, params, batches, [0, 1])
    teachers = [ntkfuse.get_mlp(params, l) for l in (0, 1)]
    init = init_surrogates("bottleneck", teachers, jax.random.PRNGKey(0), width=8, method="prune",
                           activation=cfg.activation)
    res = fit_blocks(init, x, y, FitConfig(steps=30, batch_size=16, holdout=0.2, eval_every=10, patience=0,
                                           progress=False, lr=3e-3), cfg.activation)
    assert np.all(evaluate_blocks(res.blocks, x, y, cfg.activation) < evaluate_blocks(init, x, y, cfg.activation))
    new = ntkfuse.replace_mlps(params, dict(zip((0, 1), res.blocks)))
    assert np.isfinite(np.asarray(ntkfuse.forward(cfg, new, batches[0]).logits)).all()
