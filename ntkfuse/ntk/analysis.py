"""Looking inside kernels: where the error lives (per-layer kernels), how similar two
kernels are beyond a Frobenius distance (centred kernel alignment), their spectra, and
what a kernel predicts for a task (kernel regression, the "kernel view" of fine-tuning:
Malladi et al. 2023 solve eNTK regression to predict fine-tuning outcomes).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .metrics import MetricError


def layer_kernels(cfg, params, batch, layers: Sequence[int], **kernel_kwargs) -> dict:
    """{layer: {kind: K}}: each kernel w.r.t. one layer's MLP parameters only.

    Every kernel of `ntk.KINDS` is a sum over parameters (K_ij = Σ_p g_ip op(g_jp)), so
    the per-layer kernels add up to the kernel of all the layers together (tested)."""
    from .kernels import kernels
    from .selectors import mlp_layers
    return {int(l): {k: np.asarray(v, np.float64) for k, v in
                     kernels(cfg, params, batch, selector=mlp_layers([int(l)]), **kernel_kwargs).items()}
            for l in layers}


def _square(K, what="kernel") -> np.ndarray:
    K = np.asarray(K, np.float64)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise MetricError(f"{what} must be a square (N, N) matrix, got shape {K.shape}")
    return K


def centred_kernel_alignment(K1, K2) -> float:
    """CKA(K1, K2) = ⟨HK1H, HK2H⟩_F / (‖HK1H‖_F ‖HK2H‖_F), H = I − 11ᵀ/N (Cortes et al. 2012;
    Kornblith et al. 2019). 1 for kernels equal up to scale; invariant to scaling either one.
    Asymmetric (sign) kernels use the same Frobenius formula."""
    A, B = _square(K1), _square(K2)
    if A.shape != B.shape:
        raise MetricError(f"kernel shapes differ: {A.shape} vs {B.shape}")
    Ac = A - A.mean(0, keepdims=True) - A.mean(1, keepdims=True) + A.mean()
    Bc = B - B.mean(0, keepdims=True) - B.mean(1, keepdims=True) + B.mean()
    den = np.linalg.norm(Ac) * np.linalg.norm(Bc)
    return float(np.sum(Ac * Bc) / den) if den > 0 else float("nan")


def kernel_spectrum(K) -> np.ndarray:
    """Eigenvalues, largest first, of the symmetric part (K + Kᵀ)/2 (= K for the vanilla kernel;
    the sign kernel is asymmetric and its symmetric part is what a quadratic form sees)."""
    K = _square(K)
    return np.linalg.eigvalsh(0.5 * (K + K.T))[::-1]


def kernel_regression(K_train, K_test_train, y_train, *, ridge: float = 1e-6,
                      num_classes: Optional[int] = None) -> np.ndarray:
    """Kernel (ridge) regression predictions ŷ = K_te,tr (K_tr,tr + λ I)⁻¹ Y, solved in float64.

    λ = ridge · tr(K_tr,tr)/N (relative, so one setting fits kernels of any scale).
    `num_classes=None`: `y_train` are real targets, returns (N_test,) predictions.
    Classification: labels 0..C−1 become targets +1/−1 (C = 2: one column) or one-hot
    minus 1/C (C > 2), and the predicted class (N_test,) ints is returned."""
    Ktr = _square(K_train, "K_train")
    Kte = np.asarray(K_test_train, np.float64)
    y = np.asarray(y_train)
    n = Ktr.shape[0]
    if Kte.ndim != 2 or Kte.shape[1] != n or y.shape[0] != n:
        raise MetricError(f"shapes do not fit: K_train {Ktr.shape}, K_test_train {Kte.shape}, y_train {y.shape}")
    if ridge < 0:
        raise MetricError(f"ridge must be >= 0, got {ridge}")
    lam = ridge * max(np.trace(Ktr) / max(n, 1), 1e-300)
    if num_classes is None:
        Y = y.astype(np.float64)
    else:
        if y.min() < 0 or y.max() >= num_classes:
            raise MetricError(f"labels must be in 0..{num_classes - 1}, got {sorted(set(y.tolist()))}")
        Y = (np.where(y == 1, 1.0, -1.0) if num_classes == 2
             else np.eye(num_classes)[y] - 1.0 / num_classes)
    alpha = np.linalg.solve(Ktr + lam * np.eye(n), Y)
    pred = Kte @ alpha
    if num_classes is None:
        return pred
    return (pred > 0).astype(int) if num_classes == 2 else np.argmax(pred, axis=1)


def kernel_accuracy(K, labels, train_idx, test_idx, *, num_classes: int, ridge: float = 1e-6) -> float:
    """Accuracy on `test_idx` of kernel classification trained on `train_idx` with kernel K (N, N)."""
    K = _square(K)
    labels = np.asarray(labels)
    tr, te = np.asarray(train_idx), np.asarray(test_idx)
    if len(tr) == 0 or len(te) == 0:
        raise MetricError("kernel_accuracy needs a non-empty train and test split")
    pred = kernel_regression(K[np.ix_(tr, tr)], K[np.ix_(te, tr)], labels[tr], ridge=ridge, num_classes=num_classes)
    return float(np.mean(pred == labels[te]))


__all__ = ["layer_kernels", "centred_kernel_alignment", "kernel_spectrum", "kernel_regression", "kernel_accuracy"]
