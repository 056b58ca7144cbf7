"""Per-layer kernels, centred kernel alignment, spectra and kernel regression."""
from __future__ import annotations

import jax
import numpy as np
import pytest

import ntkfuse
from ntkfuse import ntk
from ntkfuse.models import ModelConfig


def test_layer_kernels_sum_to_the_kernel_of_all_layers():
    """Every kernel is a sum over parameters, so kernels of disjoint parameter blocks add up."""
    cfg = ModelConfig(family="bert", vocab_size=40, hidden=16, intermediate=24, num_layers=3, num_heads=2,
                      max_positions=16, num_labels=2)
    params = ntkfuse.init_params(cfg, jax.random.PRNGKey(0))
    params = jax.tree_util.tree_map(lambda a: a * 20 if a.ndim == 2 and a.shape[0] > 2 else a, params)
    rng = np.random.default_rng(3)
    batch = {"input_ids": rng.integers(3, 40, (5, 6)).astype(np.int32), "attention_mask": np.ones((5, 6), np.int32)}
    kinds = ("ntk", "sign", "sign_sym")
    per = ntk.layer_kernels(cfg, params, batch, [0, 2], kinds=kinds)
    full = ntk.kernels(cfg, params, batch, selector=ntk.mlp_layers([0, 2]), kinds=kinds)
    assert sorted(per) == [0, 2]
    for k in kinds:
        np.testing.assert_allclose(per[0][k] + per[2][k], np.asarray(full[k], np.float64), rtol=1e-5,
                                   atol=1e-6 * float(np.abs(full[k]).max()))
        assert not np.allclose(per[0][k], per[2][k])


def _direct_cka(A, B):
    n = A.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    a, b = H @ A @ H, H @ B @ H
    return np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b))


def test_centred_kernel_alignment():
    rng = np.random.default_rng(0)
    G = rng.normal(size=(8, 20))
    K1 = G @ G.T
    K2 = G[:, :10] @ G[:, :10].T
    S = G @ np.sign(G).T   # asymmetric, as the sign kernel
    assert ntk.centred_kernel_alignment(K1, 3.0 * K1) == pytest.approx(1.0, abs=1e-12)
    assert ntk.centred_kernel_alignment(K1, K1 + 5.0) == pytest.approx(1.0, abs=1e-12)   # centring removes offsets
    for a, b in ((K1, K2), (K1, S), (S, S.T)):
        assert ntk.centred_kernel_alignment(a, b) == pytest.approx(_direct_cka(a, b), rel=1e-10)
    with pytest.raises(ntk.MetricError, match="differ"):
        ntk.centred_kernel_alignment(K1, K1[:4, :4])


def test_kernel_spectrum_is_the_symmetric_parts_eigenvalues():
    rng = np.random.default_rng(1)
    G = rng.normal(size=(6, 9))
    S = G @ np.sign(G).T
    got = ntk.kernel_spectrum(S)
    want = np.sort(np.linalg.eigvals(0.5 * (S + S.T)).real)[::-1]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    assert np.all(np.diff(got) <= 0)


@pytest.mark.parametrize("num_classes", [None, 2, 3])
def test_kernel_regression_equals_closed_form(num_classes):
    rng = np.random.default_rng(2)
    G = rng.normal(size=(12, 30))
    K = G @ G.T
    tr, te = np.arange(8), np.arange(8, 12)
    y = rng.normal(size=12) if num_classes is None else rng.integers(0, num_classes, 12)
    ridge = 1e-3
    lam = ridge * np.trace(K[:8, :8]) / 8
    if num_classes is None:
        Y = y[tr]
    elif num_classes == 2:
        Y = np.where(y[tr] == 1, 1.0, -1.0)
    else:
        Y = np.eye(num_classes)[y[tr]] - 1.0 / num_classes
    raw = K[np.ix_(te, tr)] @ np.linalg.inv(K[np.ix_(tr, tr)] + lam * np.eye(8)) @ Y
    got = ntk.kernel_regression(K[np.ix_(tr, tr)], K[np.ix_(te, tr)], y[tr], ridge=ridge, num_classes=num_classes)
    if num_classes is None:
        np.testing.assert_allclose(got, raw, rtol=1e-8)
    else:
        want = (raw > 0).astype(int) if num_classes == 2 else raw.argmax(1)
        np.testing.assert_array_equal(got, want)
        acc = ntk.kernel_accuracy(K, y, tr, te, num_classes=num_classes, ridge=ridge)
        assert acc == pytest.approx(np.mean(want == y[te]))


def test_kernel_regression_bad_inputs():
    K = np.eye(4)
    with pytest.raises(ntk.MetricError, match="labels must be in"):
        ntk.kernel_regression(K, K, np.array([0, 1, 2, 1]), num_classes=2)
    with pytest.raises(ntk.MetricError, match="shapes"):
        ntk.kernel_regression(K, np.eye(3), np.zeros(4))
    with pytest.raises(ntk.MetricError, match="non-empty"):
        ntk.kernel_accuracy(K, np.zeros(4, int), [], [0], num_classes=2)
