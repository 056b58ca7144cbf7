"""JAX k-means: quality vs scikit-learn, invariants (centroids are cluster means, no
empty clusters, converged labels are nearest-centroid), determinism, batching, errors.

Small problems and one shared shape per test group so the jit cache is reused."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from ntkfuse.compress import KMeansResult, kmeans, kmeans_batched
from ntkfuse.compress.kmeans import _relocate_empty

N_INIT = 5


def _blobs(seed=0, n_per=30, centres=8, p=6):
    rng = np.random.default_rng(seed)
    c = rng.normal(0, 2.0, (centres, p))
    return np.concatenate([rng.normal(m, 0.4, (n_per, p)) for m in c]).astype(np.float32)


def _gauss(seed=0, n=240, p=6):
    """No cluster structure: the hard case where seeding and Lloyd quality matter."""
    return np.random.default_rng(seed).normal(0, 1.0, (n, p)).astype(np.float32)


def _check_invariants(X, r: KMeansResult, k):
    X64 = X.astype(np.float64)
    C = np.asarray(r.centroids, np.float64)
    lab = np.asarray(r.labels)
    cnt = np.asarray(r.counts)
    assert C.shape == (k, X.shape[1]) and lab.shape == (X.shape[0],)
    np.testing.assert_array_equal(cnt, np.bincount(lab, minlength=k))
    assert cnt.min() >= 1, "empty cluster survived"
    for j in range(k):  # centroid j is the mean of its members
        np.testing.assert_allclose(C[j], X64[lab == j].mean(0), rtol=1e-4, atol=1e-5)
    inertia = ((X64 - C[lab]) ** 2).sum()
    np.testing.assert_allclose(float(r.inertia), inertia, rtol=1e-5)


@pytest.mark.parametrize("make,k", [(_blobs, 8), (_gauss, 24)])
def test_inertia_matches_sklearn(make, k):
    from sklearn.cluster import KMeans
    X = make()
    r = kmeans(X, k, jax.random.key(0), n_init=N_INIT)
    _check_invariants(X, r, k)
    sk = min(KMeans(k, n_init=N_INIT, random_state=s, algorithm="lloyd").fit(X).inertia_ for s in (0,))
    assert float(r.inertia) <= 1.01 * sk, (float(r.inertia), sk)


def test_converged_labels_are_nearest_centroid():
    X = _gauss(1)
    r = kmeans(X, 24, jax.random.key(3), n_init=N_INIT, tol=0.0)
    C = np.asarray(r.centroids, np.float64)
    d = ((X.astype(np.float64)[:, None, :] - C[None]) ** 2).sum(-1)
    best = d.min(1)
    own = d[np.arange(len(X)), np.asarray(r.labels)]
    np.testing.assert_allclose(own, best, rtol=1e-5, atol=1e-6)  # a Lloyd fixed point
    assert 1 <= int(r.n_iter) < 300


def test_large_tol_stops_after_one_iteration():
    # tol is relative to the mean per-feature variance (sklearn's meaning)
    r = kmeans(_gauss(1), 24, jax.random.key(3), n_init=N_INIT, tol=1e6)
    assert int(r.n_iter) == 1


def test_every_point_its_own_cluster():
    X = _gauss(2, n=24)
    r = kmeans(X, 24, jax.random.key(0), n_init=2)
    np.testing.assert_array_equal(np.asarray(r.counts), np.ones(24))
    assert float(r.inertia) == pytest.approx(0.0, abs=1e-8)
    np.testing.assert_allclose(np.sort(np.asarray(r.centroids), 0), np.sort(X, 0), atol=1e-6)


def test_relocate_empty_moves_farthest_points():
    labels = np.array([0, 0, 0, 0, 1, 1], np.int32)
    mind = np.array([0.1, 5.0, 0.2, 3.0, 0.0, 0.3], np.float32)
    out = np.asarray(_relocate_empty(jax.numpy.asarray(labels), jax.numpy.asarray(mind), 4))
    # clusters 2 and 3 were empty: they get the farthest (1) and second farthest (3) points
    np.testing.assert_array_equal(out, [0, 2, 0, 3, 1, 1])
    np.testing.assert_array_equal(np.asarray(_relocate_empty(jax.numpy.asarray(out), mind, 4)), out)
    # the farthest point (index 1) is the only member of cluster 1: it must stay there
    labels = np.array([0, 1, 0, 0, 0, 0], np.int32)
    out = np.asarray(_relocate_empty(jax.numpy.asarray(labels), jax.numpy.asarray(mind), 4))
    np.testing.assert_array_equal(out, [0, 1, 0, 2, 0, 3])
    assert np.bincount(out, minlength=4).min() == 1


def test_deterministic_for_a_key():
    X = _gauss(1)
    a = kmeans(X, 24, jax.random.key(7), n_init=N_INIT)
    b = kmeans(X, 24, jax.random.key(7), n_init=N_INIT)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    c = kmeans(X, 24, jax.random.key(8), n_init=N_INIT)
    assert not np.array_equal(np.asarray(a.labels), np.asarray(c.labels))


def test_batched_matches_single_calls():
    Xs = np.stack([_gauss(1), _gauss(4)])
    key = jax.random.key(5)
    rb = kmeans_batched(Xs, 24, key, n_init=N_INIT)
    assert rb.centroids.shape == (2, 24, 6) and rb.inertia.shape == (2,)
    for l, kl in enumerate(jax.random.split(key, 2)):
        r = kmeans(Xs[l], 24, kl, n_init=N_INIT)
        np.testing.assert_array_equal(np.asarray(rb.labels[l]), np.asarray(r.labels))
        np.testing.assert_allclose(float(rb.inertia[l]), float(r.inertia), rtol=1e-5)


def test_bad_inputs():
    X = _gauss(1)
    with pytest.raises(ValueError, match="k must be"):
        kmeans(X, 0, jax.random.key(0))
    with pytest.raises(ValueError, match="k must be"):
        kmeans(X, len(X) + 1, jax.random.key(0))
    with pytest.raises(ValueError, match="2-D"):
        kmeans(X[0], 2, jax.random.key(0))
    with pytest.raises(ValueError, match="3-D"):
        kmeans_batched(X, 2, jax.random.key(0))
    with pytest.raises(ValueError, match="n_init"):
        kmeans(X, 2, jax.random.key(0), n_init=0)
