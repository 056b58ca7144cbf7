"""Euclidean k-means in JAX: greedy k-means++ seeding, Lloyd iterations, restarts.

Semantics follow scikit-learn's ``KMeans(algorithm="lloyd")`` (what the MLP Fusion
reference uses) so that results are comparable:

* seeding: greedy k-means++ — each step draws ``2 + floor(log k)`` candidates by D²
  sampling and keeps the one that lowers the potential most;
* ``tol`` is *relative*: Lloyd stops when the squared Frobenius norm of the centre
  shift between two iterations is ≤ ``tol · mean_j Var(X[:, j])`` (sklearn's
  ``_tolerance``), or when the labels stop changing ("strict convergence"), or after
  ``max_iter`` iterations;
* ``n_init`` restarts run together (``vmap``) and the lowest inertia wins;
* empty clusters are re-seeded with the points farthest from their assigned centre
  (sklearn's rule, except that a cluster's last member is never taken), so every
  returned cluster has n_j ≥ 1.

Differences from sklearn, on purpose: after the loop we do one last assignment
(+ empty-cluster re-seeding) **and** one last mean update, so the returned centroids
are exactly the means of the returned clusters (what fusion needs: centroid j is the
average of its n_j sub-MLPs); this never increases the inertia.

Numerics (float32): the data are centred first (sklearn does the same). Distances for
the assignment use the expansion ‖x‖² − 2x·c + ‖c‖² with matmuls at
``Precision.HIGHEST`` (on GPUs the default f32 matmul may be TF32, whose 10-bit
mantissa can flip assignments between nearly equidistant centres), clamped ≥ 0.
Centring removes the common offset, so the expansion does not subtract two large
nearly equal numbers; the reported inertia is computed from explicit differences
x − c, not from the expansion. Cluster sums use a one-hot matmul rather than a
scatter-add so that results are deterministic on GPU for a given key.

Memory: per restart an N×k distance matrix and an N×k one-hot (30 × 3072 × 768 f32
≈ 280 MB each for one roberta-base layer). Seeding precomputes the N×N pairwise
squared distances once per layer when N ≤ 8192 (then each sequential seeding step
is a gather + min, no matmul); otherwise candidate distances are small matmuls.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec

from .. import sharding
from ..compile import oneshot_jit

Array = jax.Array
_HI = lax.Precision.HIGHEST
PAIRWISE_MAX_POINTS = 8192


class KMeansResult(NamedTuple):
    centroids: Array   # (k, p) float32 (batched: (L, k, p))
    labels: Array      # (N,) int32
    counts: Array      # (k,) int32, every entry ≥ 1
    inertia: Array     # () float32: Σ_i ‖x_i − c_{label_i}‖²
    n_iter: Array      # () int32: Lloyd iterations of the winning restart


def _sqdist_pairwise(X):
    sq = jnp.sum(X * X, axis=1)
    P = sq[:, None] + sq[None, :] - 2.0 * jnp.matmul(X, X.T, precision=_HI)
    P = jnp.maximum(P, 0.0)
    return P.at[jnp.diag_indices(X.shape[0])].set(0.0)


def _kmeanspp(X, sq, P, k, key, n_trials):
    """Greedy k-means++ indices (k,) for one restart. P: (N, N) pairwise or None."""
    N = X.shape[0]

    def dist_rows(idx):  # squared distances from points idx (m,) to all points: (m, N)
        if P is not None:
            return P[idx]
        d = sq[idx][:, None] + sq[None, :] - 2.0 * jnp.matmul(X[idx], X.T, precision=_HI)
        return jnp.maximum(d, 0.0)

    k0, key = jax.random.split(key)
    first = jax.random.randint(k0, (), 0, N)
    closest = dist_rows(first[None])[0]
    idx = jnp.zeros((k,), jnp.int32).at[0].set(first)

    def step(t, carry):
        idx, closest = carry
        kt = jax.random.fold_in(key, t)
        total = jnp.sum(closest)
        logits = jnp.where(total > 0, jnp.log(closest), 0.0)  # log 0 = -inf: chosen points never redrawn
        cand = jax.random.categorical(kt, logits, shape=(n_trials,))
        new = jnp.minimum(closest[None, :], dist_rows(cand))
        best = jnp.argmin(jnp.sum(new, axis=1))
        return idx.at[t].set(cand[best].astype(jnp.int32)), new[best]

    idx, _ = lax.fori_loop(1, k, step, (idx, closest))
    return idx


def _assign(X, sq, C):
    """Nearest centre and its squared distance (clamped ≥ 0)."""
    d = jnp.sum(C * C, axis=1)[None, :] - 2.0 * jnp.matmul(X, C.T, precision=_HI)  # + ‖x‖² omitted
    labels = jnp.argmin(d, axis=1).astype(jnp.int32)
    mind = jnp.maximum(sq + jnp.take_along_axis(d, labels[:, None], axis=1)[:, 0], 0.0)
    return labels, mind


def _relocate_empty(labels, mind, k):
    """Give each empty cluster one of the points farthest from their centre (sklearn's rule),
    never taking the last member of a cluster, so no new cluster is emptied: with N ≥ k at
    least N − (#non-empty) ≥ #empty points are eligible, hence every n_j ≥ 1 afterwards."""
    N = labels.shape[0]
    counts = jnp.zeros((k,), jnp.int32).at[labels].add(1)
    empty = counts == 0
    # rank of each point inside its cluster, farthest first; the closest member always stays
    order = jnp.lexsort((-mind, labels))
    sl = labels[order]
    rank_in = jnp.arange(N) - jnp.searchsorted(sl, sl, side="left")
    eligible = jnp.zeros((N,), bool).at[order].set(rank_in < counts[sl] - 1)
    far = jnp.argsort(jnp.where(eligible, -mind, jnp.inf))  # stable: deterministic
    rank = jnp.cumsum(empty) - 1
    target = jnp.where(empty, far[jnp.clip(rank, 0, N - 1)], N)  # N = out of range → dropped
    return labels.at[target].set(jnp.arange(k, dtype=jnp.int32), mode="drop")


def _means(X, labels, C_old, k):
    onehot = (labels[:, None] == jnp.arange(k)[None, :]).astype(X.dtype)
    counts = jnp.sum(onehot, axis=0)
    sums = jnp.matmul(onehot.T, X, precision=_HI)
    C = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], C_old)
    return C, counts.astype(jnp.int32)


def _single(X, sq, P, k, key, max_iter, tol_abs, n_trials):
    """One restart on centred X: seeding, Lloyd, final assignment + mean update."""
    C0 = X[_kmeanspp(X, sq, P, k, key, n_trials)]
    N = X.shape[0]

    def cond(s):
        _, _, it, done = s
        return jnp.logical_and(it < max_iter, jnp.logical_not(done))

    def body(s):
        C, old, it, _ = s
        labels, mind = _assign(X, sq, C)
        labels = _relocate_empty(labels, mind, k)
        Cn, _ = _means(X, labels, C, k)
        shift = jnp.sum((Cn - C) ** 2)
        done = jnp.logical_or(jnp.all(labels == old), shift <= tol_abs)
        return Cn, labels, it + 1, done

    init = (C0, jnp.full((N,), -1, jnp.int32), jnp.int32(0), jnp.bool_(False))
    C, _, it, _ = lax.while_loop(cond, body, init)
    labels, mind = _assign(X, sq, C)
    labels = _relocate_empty(labels, mind, k)
    C, counts = _means(X, labels, C, k)
    inertia = jnp.sum((X - C[labels]) ** 2)
    return C, labels, counts, inertia, it


def _prepare(X, tol):
    """Per-layer data shared by all restarts: (mean, centred X, ‖x‖², pairwise P or None, tol_abs)."""
    X = X.astype(jnp.float32)
    mean = jnp.mean(X, axis=0)
    Xc = X - mean
    tol_abs = tol * jnp.mean(jnp.var(X, axis=0))
    sq = jnp.sum(Xc * Xc, axis=1)
    P = _sqdist_pairwise(Xc) if X.shape[0] <= PAIRWISE_MAX_POINTS else None
    return mean, Xc, sq, P, tol_abs


def _restarts(Xc, sq, P, tol_abs, keys, k, max_iter):
    """The restarts of one layer, one per key (vmapped): (C, labels, counts, inertia, n_iter), each
    with a leading restart axis."""
    n_trials = 2 + int(math.log(k))
    return jax.vmap(lambda kk: _single(Xc, sq, P, k, kk, max_iter, tol_abs, n_trials))(keys)


def _best(mean, C, labels, counts, inertia, it):
    """The restart of lowest inertia (the first one on ties)."""
    b = jnp.argmin(inertia)
    return KMeansResult(C[b] + mean, labels[b], counts[b], inertia[b], it[b])


def _kmeans_one(X, key, tol, k, n_init, max_iter):
    mean, Xc, sq, P, tol_abs = _prepare(X, tol)
    keys = jax.random.split(key, n_init)
    return _best(mean, *_restarts(Xc, sq, P, tol_abs, keys, k, max_iter))


_kmeans_layer = oneshot_jit(_kmeans_one, static_argnums=(3, 4, 5))


@oneshot_jit(static_argnums=(3, 4, 5))
def _kmeans_batched(Xs, keys, tol, k, n_init, max_iter):
    return jax.vmap(lambda X, kk: _kmeans_one(X, kk, tol, k, n_init, max_iter))(Xs, keys)


def _check(X, k, n_init, max_iter, batched):
    shape = tuple(X.shape)
    want = 3 if batched else 2
    if len(shape) != want:
        raise ValueError(f"kmeans{'_batched' if batched else ''} expects a {want}-D array, got shape {shape}")
    N = shape[-2]
    if not 1 <= k <= N:
        raise ValueError(f"k must be in [1, {N}] (the number of points), got {k}")
    if n_init < 1 or max_iter < 1:
        raise ValueError(f"n_init and max_iter must be ≥ 1, got {n_init}, {max_iter}")


def kmeans(X, k: int, key, n_init: int = 30, max_iter: int = 300, tol: float = 1e-4) -> KMeansResult:
    """k-means of the rows of X (N, p); see the module docstring for the exact semantics."""
    _check(X, k, n_init, max_iter, batched=False)
    return _kmeans_layer(jnp.asarray(X), key, jnp.float32(tol), int(k), int(n_init), int(max_iter))


@oneshot_jit(static_argnames=("mesh", "k", "n_init", "max_iter"))
def _kmeans_batched_restarts(Xs, keys, tol, *, mesh, k, n_init, max_iter):
    """`_kmeans_batched` with the RESTART axis split across `mesh` (Xs and keys replicated): every
    device prepares all layers (centring, pairwise distances) and runs its share of each layer's
    restarts (`shard_map`, the same `_single` as on one device, restart r with key
    `jax.random.split(keys[l], n_init)[r]` as there); the restarts are padded to a multiple of the
    mesh size with copies of restart 0 whose inertia is then masked, and the lowest inertia (first
    on ties) is chosen after XLA gathers them."""
    axis = sharding.mesh_axis(mesh)
    R = sharding.padded(n_init, mesh)
    rkeys = jax.vmap(lambda kk: jax.random.split(kk, n_init))(keys)          # (L, n_init, ...)
    if R > n_init:
        rkeys = jnp.concatenate([rkeys, jnp.repeat(rkeys[:, :1], R - n_init, axis=1)], axis=1)
    mean, Xc, sq, P, tol_abs = jax.vmap(_prepare, in_axes=(0, None))(Xs, tol)

    def local(Xc, sq, P, tol_abs, kk):   # kk: (L, R / mesh size, ...) — this device's restarts
        return jax.vmap(lambda x, s, p, t, kl: _restarts(x, s, p, t, kl, k, max_iter))(Xc, sq, P, tol_abs, kk)

    split = PartitionSpec(None, axis)
    C, labels, counts, inertia, it = jax.shard_map(
        local, mesh=mesh, in_specs=(PartitionSpec(),) * 4 + (split,), out_specs=split,
        check_vma=False)(Xc, sq, P, tol_abs, rkeys)
    inertia = jnp.where(jnp.arange(R)[None, :] < n_init, inertia, jnp.inf)
    return jax.vmap(_best)(mean, C, labels, counts, inertia, it)


def split_restarts(n_layers: int, n_init: int, n_devices: int) -> bool:
    """Whether `run_batched` splits the restarts (rather than the layers) across `n_devices`: when
    that gives each device fewer restarts to run, e.g. one layer with 30 restarts on 8 devices
    (4 restarts each instead of 30), not 5 layers × 3 restarts (1 layer × 3 instead of 5 × 1)."""
    per_layers = -(-n_layers // n_devices) * n_init
    per_restarts = n_layers * -(-n_init // n_devices)
    return per_restarts < per_layers


def run_batched(Xs, keys, tol, k, n_init, max_iter, devices="auto") -> KMeansResult:
    """`_kmeans_batched` on one device, or split across the devices of `devices`
    (`ntkfuse.sharding.make_mesh`) along the layers or, when there are too few layers for the
    devices (`split_restarts`), along the restarts.
    Layers: Xs and keys placed row-sharded (padded with copies of layer 0, dropped afterwards) and
    the same jitted program partitioned by XLA along the vmapped layer axis, so every layer's
    k-means is the one-device computation. Restarts: `_kmeans_batched_restarts`, the same
    per-restart keys and computation, the best restart chosen after gathering. Either way the
    results equal the one-device ones."""
    mesh = sharding.make_mesh(devices)
    args = (jnp.float32(tol), int(k), int(n_init), int(max_iter))
    if mesh is None:
        return _kmeans_batched(jnp.asarray(Xs), keys, *args)
    L = Xs.shape[0]
    if split_restarts(L, int(n_init), sharding.size(mesh)):
        xs, ks = sharding.replicate((jnp.asarray(Xs), jnp.asarray(keys)), mesh)
        out = _kmeans_batched_restarts(xs, ks, args[0], mesh=mesh, k=args[1], n_init=args[2], max_iter=args[3])
        return KMeansResult(*(sharding.to_default_device(a) for a in out))
    xs, ks = sharding.shard_rows((jnp.asarray(Xs), jnp.asarray(keys)), mesh)
    out = _kmeans_batched(xs, ks, *args)
    return KMeansResult(*(sharding.to_default_device(a[:L]) for a in out))


def kmeans_batched(Xs, k: int, key, n_init: int = 30, max_iter: int = 300, tol: float = 1e-4,
                   devices="auto") -> KMeansResult:
    """k-means of each Xs[l] (L, N, p) in one jitted call; layer l uses ``jax.random.split(key, L)[l]``
    (so it matches ``kmeans(Xs[l], k, keys[l])``). Every field gains a leading L axis.
    devices: "auto" (all local devices when more than one: the layers are split across them, or
    the restarts when there are fewer layers than that needs: `split_restarts`), None or 1 (one
    device), a count, devices or a Mesh. Same results either way."""
    _check(Xs, k, n_init, max_iter, batched=True)
    keys = jax.random.split(key, Xs.shape[0])
    return run_batched(Xs, keys, tol, k, n_init, max_iter, devices)
