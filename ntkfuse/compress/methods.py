"""One-shot compression of MLP blocks (METHOD.md §2): fusion, cluster, sketch, prune,
magnitude, svd, mmd. Pure functions of the pretrained block and a PRNG key.

Neuron i of a DenseMLP is the sub-MLP z_i = [W1[i, :], b1[i], W2[:, i]] ∈ R^{2d+1}
(R^{2d} when the block has no b1). b2 is always kept unchanged. A GatedMLP's neuron is
[W_gate[i], W_up[i], W_down[:, i]] ∈ R^{3d} (docs/gated.md); the methods ask the block
for its neuron operations (features, scores, fuse, cluster, sketch) and, for magnitude and
svd, its weight matrices (`weight_matrices`, `with_weight_matrices`, `low_rank`), never its
fields.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..compile import oneshot_jit
from ..models import replace_mlps
from ..models.blocks import DenseMLP, activation_fn
from ..validate import check_layers, check_options, check_width, keyword_defaults
from .kmeans import _kmeans_layer, run_batched

METHODS = ("fusion", "cluster", "sketch", "prune", "magnitude", "svd", "mmd")
# Methods whose result depends on the PRNG key (k-means initialisation, random sketch, MMD
# particle initialisation); prune, magnitude and svd ignore it. Drivers repeat only these over seeds.
RANDOM_METHODS = frozenset({"fusion", "cluster", "sketch", "mmd"})


class CompressionError(ValueError):
    """Bad arguments to a compression function (raised before any heavy work)."""


# ----------------------------------------------------------------------------- helpers

def neuron_features(block: DenseMLP) -> jax.Array:
    """(D, 2d+1) rows z_i = [W1[i], b1[i], W2[:, i]] ((D, 2d) without b1): `block.neuron_features()`."""
    return block.neuron_features()


def neuron_scores(block: DenseMLP, score: str = "l2") -> jax.Array:
    """s_i = ‖a_i‖·‖c_i‖ (L2 or L1 norms) of neuron i: `block.neuron_scores(score)`."""
    return block.neuron_scores(score)


def svd_rank_for_width(d: int, D: int, k: int) -> int:
    """Parameter-matched rank: a width-k MLP has 2kd weights, rank-t factors of W1 and W2
    have 2t(D+d), so t = floor(k·d / (D+d)) (≥ 1). d=768, D=3072, k=768 → 153. The same t for
    a gated block: a width-k GatedMLP has 3kd weights, rank-t factors of its three matrices
    3t(D+d)."""
    return max(1, (k * d) // (D + d))


# ----------------------------------------------------------------------------- methods
# Each method is `name(block, width, key, [km,] *, options...)`: its keyword-only
# parameters and their defaults ARE the method's options (OPTIONS is read from them).

def _kmeans(block, width, key, n_init, max_iter, tol):
    return _kmeans_layer(block.neuron_features(), key, jnp.float32(tol), int(width), int(n_init), int(max_iter))


def fusion(block, width, key, km=None, *, n_init=30, max_iter=300, tol=1e-4):
    """k-means over the neurons; centroids with the fixed diag(n) of cluster sizes (FusedMLP)."""
    km = _kmeans(block, width, key, n_init, max_iter, tol) if km is None else km
    return block.fuse(km.centroids, km.counts)


def cluster(block, width, key, km=None, *, n_init=30, max_iter=300, tol=1e-4):
    """The same k-means; √n absorbed into both layers: a plain DenseMLP (W1', b1' rows and W2'
    columns scaled by √n_j)."""
    km = _kmeans(block, width, key, n_init, max_iter, tol) if km is None else km
    return block.cluster_neurons(km.centroids, km.counts)


def sketch(block, width, key, *, keep=0):
    """W1' = SᵀW1, b1' = Sᵀb1, W2' = W2 S with S_ij ~ N(0, 1/k); `keep` top-score neurons kept exactly."""
    keep = int(keep)
    D = block.width
    if keep:
        top = jnp.sort(jnp.argsort(-block.neuron_scores())[:keep])
        rest = jnp.setdiff1d(jnp.arange(D), top, size=D - keep)
    else:
        top, rest = jnp.zeros((0,), jnp.int32), jnp.arange(D)
    r = width - keep
    S = jax.random.normal(key, (D - keep, r), jnp.float32) / math.sqrt(r) if r else jnp.zeros((D - keep, 0))
    return block.sketch_neurons(top, rest, S)


def prune(block, width, key, *, score="l2"):
    """Keep the `width` neurons of largest score (one index set for W1 rows, b1, W2 columns)."""
    return block.take_neurons(jnp.sort(jnp.argsort(-block.neuron_scores(score))[:width]))  # original order kept


def magnitude(block, width, key, *, sparsity=0.2):
    """Zero the smallest `sparsity` fraction of the block's weight matrices' entries (|W1|, |W2|; gated:
    |W_gate|, |W_up|, |W_down|) under one threshold (one block; `compress` thresholds globally)."""
    return _magnitude_mask([block], float(sparsity))[0]


def svd(block, width, key, *, rank=None):
    """Truncated SVD of each weight matrix (W1, W2; gated: W_gate, W_up, W_down) at `rank`
    (default: parameter-matched to width, `svd_rank_for_width`)."""
    D, d = block.width, block.weight_matrices()[0].shape[1]
    rank = rank if rank is not None else svd_rank_for_width(d, D, width)
    return _svd(block, int(rank))


def mmd(block, width, key, *, steps=100, lr=1e-2, weight_decay=0.01):
    """Particles fitted by AdamW to the neurons under MMD², rescaled by √(D/k)."""
    return _mmd(block, width, key, int(steps), float(lr), float(weight_decay))


KMEANS_METHODS = ("fusion", "cluster")


# ----------------------------------------------------------------------------- checks

def _options(method, options):
    if method not in METHODS:
        raise CompressionError(f"unknown method {method!r}; known methods: {', '.join(METHODS)}")
    opts = check_options(f"method {method!r}", options, OPTIONS[method], error=CompressionError)
    if method in KMEANS_METHODS:
        if int(opts["n_init"]) < 1 or int(opts["max_iter"]) < 1 or float(opts["tol"]) < 0:
            raise CompressionError(f"k-means needs n_init ≥ 1, max_iter ≥ 1, tol ≥ 0; got {opts}")
    if method == "prune" and opts["score"] not in ("l2", "l1"):
        raise CompressionError(f"prune score must be 'l2' or 'l1', got {opts['score']!r}")
    if method == "magnitude" and not 0.0 <= float(opts["sparsity"]) < 1.0:
        raise CompressionError(f"magnitude sparsity must be in [0, 1), got {opts['sparsity']}")
    if method == "mmd" and (int(opts["steps"]) < 0 or float(opts["lr"]) <= 0):
        raise CompressionError(f"mmd needs steps ≥ 0 and lr > 0, got {opts}")
    return opts


def _sub_blocks(block):
    """An MoE's experts (any container's `sub_blocks`), or None for a plain block."""
    f = getattr(block, "sub_blocks", None)
    return f() if callable(f) else None


def _check_block(block, method, width, opts, where=""):
    subs = _sub_blocks(block)
    if subs is not None:   # a container (MoEMLP): every expert is compressed on its own
        for leaf in jax.tree_util.tree_leaves(block):
            if not bool(np.all(np.isfinite(np.asarray(leaf)))):
                raise CompressionError(f"{where}{type(block).__name__} contains NaN or infinite values")
        for e, b in enumerate(subs):
            _check_block(b, method, width, opts, where=f"{where}expert {e}: ")
        return
    if not getattr(block, "compressible", False):
        raise CompressionError(f"{where}{method} compresses an original block (DenseMLP, GatedMLP, or MoEMLP "
                               f"expert by expert), "
                               f"got {type(block).__name__}")
    if method in block.unsupported_methods:
        ok = [m for m in METHODS if m not in block.unsupported_methods]
        raise CompressionError(f"{where}{method} does not apply to {type(block).__name__}; supported: {', '.join(ok)}")
    D = block.width
    check_width(width, D, error=CompressionError, what=f"{where}width")
    if method == "sketch" and not 0 <= int(opts["keep"]) <= width:
        raise CompressionError(f"{where}sketch keep must be in [0, width={width}], got {opts['keep']}")
    if method == "svd" and opts["rank"] is not None:
        top = min(min(w.shape) for w in block.weight_matrices())
        if not 0 < int(opts["rank"]) <= top:
            raise CompressionError(f"{where}svd rank must be in [1, {top}], got {opts['rank']}")
    for f in dataclasses.fields(block):
        a = getattr(block, f.name)
        name = f.name
        if a is not None and not f.metadata.get("fixed") and not bool(np.all(np.isfinite(np.asarray(a)))):
            raise CompressionError(f"{where}{name} contains NaN or infinite values")


def _check_activation(activation):
    try:
        activation_fn(activation)
    except ValueError as e:
        raise CompressionError(str(e)) from None


def _magnitude_mask(blocks: Sequence, sparsity: float):
    """Zero the globally smallest |w| fraction of all `weight_matrices` entries of `blocks`
    (W1, W2; gated: W_gate, W_up, W_down; biases kept), same kinds and widths.
    Ties at the threshold are all kept, so at most round(sparsity·n) weights are removed."""
    flat = np.concatenate([np.abs(np.asarray(m)).ravel() for b in blocks for m in b.weight_matrices()])
    n = int(round(sparsity * flat.size))
    if n == 0:
        return list(blocks)
    thr = np.partition(flat, n - 1)[n - 1]
    # strictly above the n-th smallest is kept; weights equal to it are removed only if
    # there is room (exactness in the presence of ties is not needed for float weights)
    return [b.with_weight_matrices(tuple(jnp.where(jnp.abs(m) > thr, m, jnp.zeros((), m.dtype))
                                         for m in b.weight_matrices())) for b in blocks]


def truncated_svd_factors(W, rank: int):
    """Balanced rank-`rank` factors (U√S, √S Vᵀ) of W, computed on the host in float64 from
    the eigendecomposition of the small Gram matrix (min(m, n)² entries): singular values
    down to ~1e-8·σ_max are exact to float64 rounding, far below float32 resolution, and it
    is much faster than a full SVD on CPU. Directions with σ ≤ 1e-12·σ_max are zeroed."""
    W = np.asarray(W, np.float64)
    tall = W.shape[0] >= W.shape[1]
    A = W if tall else W.T
    evals, evecs = np.linalg.eigh(A.T @ A)
    order = np.argsort(evals)[::-1][:rank]
    sv = np.sqrt(np.maximum(evals[order], 0.0))
    V = evecs[:, order]                                   # right singular vectors of A
    ok = sv > 1e-12 * max(sv.max(initial=0.0), 1e-300)
    r = np.where(ok, np.sqrt(sv), 0.0)
    left = (A @ V) * np.where(ok, 1.0 / np.where(ok, r, 1.0), 0.0)[None, :]   # U√S = A V / √S
    right = r[:, None] * V.T                                                  # √S Vᵀ
    if not tall:   # W = Aᵀ = (right)ᵀ (left)ᵀ
        left, right = right.T, left.T
    dt = np.float32
    return jnp.asarray(left.astype(dt)), jnp.asarray(right.astype(dt))


def _svd(block, rank):
    """The block's low-rank kind (LowRankMLP, LowRankGatedMLP) from rank-`rank` factors of each
    of its `weight_matrices`."""
    return block.low_rank([truncated_svd_factors(w, rank) for w in block.weight_matrices()])


def _mmd_kernel_dists(A, B):
    sq = jnp.sum(A * A, 1)[:, None] + jnp.sum(B * B, 1)[None, :] - 2.0 * jnp.matmul(
        A, B.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.sqrt(jnp.maximum(sq, 1e-12))   # clamped: finite gradient at zero distance


def _mmd_kernel_sum(dist, h):
    return sum(jnp.exp(-dist / (h * 2.0 ** b / 4.0)) for b in range(5))


def mmd2(P, Z, h=None):
    """MMD² between particle set P and data Z with Σ_{b=0..4} exp(−‖z−z'‖/h_b), h_b = h·2^b/4,
    h = mean pairwise distance over P ∪ Z (off-diagonal pairs), detached."""
    X = jnp.concatenate([P, Z], axis=0)
    dist = _mmd_kernel_dists(X, X)
    n = X.shape[0]
    if h is None:
        h = jax.lax.stop_gradient((jnp.sum(dist) - jnp.sum(jnp.diag(dist))) / (n * (n - 1)))
    K = _mmd_kernel_sum(dist, h)
    k = P.shape[0]
    return jnp.mean(K[:k, :k]) + jnp.mean(K[k:, k:]) - 2.0 * jnp.mean(K[:k, k:])


def _mmd_particle_terms(P, Z, zz_offdiag_sum):
    """The P-dependent part of `mmd2(P, Z)`: mean K_PP − 2 mean K_PZ, with h from the
    precomputed off-diagonal sum of the constant data-data distances. mean K_ZZ depends on
    P only through the detached h, so its gradient is zero and the optimiser never needs
    the (D, D) block: same gradient as `mmd2`, (k + D)² → k² + kD distances per step."""
    d_pp = _mmd_kernel_dists(P, P)
    d_pz = _mmd_kernel_dists(P, Z)
    n = P.shape[0] + Z.shape[0]
    total = (jnp.sum(d_pp) - jnp.sum(jnp.diag(d_pp))) + 2.0 * jnp.sum(d_pz) + zz_offdiag_sum
    h = jax.lax.stop_gradient(total / (n * (n - 1)))
    return jnp.mean(_mmd_kernel_sum(d_pp, h)) - 2.0 * jnp.mean(_mmd_kernel_sum(d_pz, h))


@oneshot_jit(static_argnums=(2, 3, 4))
def _mmd_fit(P, Z, steps, lr, weight_decay):
    """AdamW on `mmd2(P, Z)` for `steps` steps (METHOD.md §2); returns the particles.
    Uses `_mmd_particle_terms` (identical gradient, no per-step data-data block)."""
    import optax
    opt = optax.adamw(lr, weight_decay=weight_decay)
    d_zz = _mmd_kernel_dists(Z, Z)
    zz = jnp.sum(d_zz) - jnp.sum(jnp.diag(d_zz))       # constant over the steps
    grad = jax.grad(_mmd_particle_terms)

    def step(carry, _):
        P, state = carry
        upd, state = opt.update(grad(P, Z, zz), state, P)
        return (optax.apply_updates(P, upd), state), None

    (P, _), _ = jax.lax.scan(step, (P, opt.init(P)), None, length=steps)
    return P


def _mmd(block, k, key, steps, lr, weight_decay):
    Z = block.neuron_features()
    D = Z.shape[0]
    P0 = Z[jax.random.choice(key, D, (k,), replace=False)]
    P = _mmd_fit(P0, Z, steps, lr, weight_decay)
    return block.with_neurons(P * math.sqrt(D / k))


METHOD_FNS = {"fusion": fusion, "cluster": cluster, "sketch": sketch, "prune": prune, "magnitude": magnitude,
              "svd": svd, "mmd": mmd}
OPTIONS = {m: keyword_defaults(fn) for m, fn in METHOD_FNS.items()}   # {method: {option: default}}


def check_methods(methods, *, error=None, also=()) -> tuple:
    """Method names as given, each known (or in `also`, e.g. a driver's "full") and listed once;
    the drivers' boundary check (ntk_compare, finetune)."""
    error = error or CompressionError
    methods = tuple(methods)
    known = tuple(also) + METHODS
    bad = [m for m in methods if m not in known]
    if bad:
        raise error(f"unknown method{'s' if len(bad) > 1 else ''} {', '.join(bad)}; known: {', '.join(known)}")
    if len(set(methods)) != len(methods):
        raise error(f"a method is listed twice in {','.join(methods)}")
    return methods


def check_method_options(options_by_method, *, error=None) -> dict:
    """{method: {option: value}} with known methods and options (OPTIONS), else `error`."""
    error = error or CompressionError
    out = {}
    for m, opts in dict(options_by_method).items():
        if m not in METHODS:
            raise error(f"options for unknown method {m!r}; known: {', '.join(METHODS)}")
        check_options(f"method {m}", opts, OPTIONS[m], error=error)
        out[m] = dict(opts)
    return out


def _dispatch(block, method, width, key, opts, km=None):
    fn = METHOD_FNS[method]
    if method in KMEANS_METHODS:
        return fn(block, width, key, km, **opts)
    return fn(block, width, key, **opts)


# ----------------------------------------------------------------------------- public API

def compress_block(block: DenseMLP, method: str, width: int, key, *, activation: str = "gelu", **options):
    """Compress one DenseMLP to width `width` (METHOD.md §2).

    fusion → FusedMLP (static counts); cluster, sketch, prune, mmd → DenseMLP of width k;
    magnitude → DenseMLP of width D with the smallest `sparsity` fraction of |W1|,|W2|
    zeroed (`width` is validated but unused); svd → LowRankMLP of rank `rank` (default
    `svd_rank_for_width`). A GatedMLP gives the gated kinds (fusion → FusedGatedMLP,
    magnitude → GatedMLP with zeros in W_gate, W_up, W_down, svd → LowRankGatedMLP;
    docs/gated.md). `activation` is validated only: no method depends on σ.
    Options: fusion/cluster n_init, max_iter, tol; sketch keep; prune score ("l2"|"l1");
    magnitude sparsity; svd rank; mmd steps, lr, weight_decay (AdamW, torch's default 0.01).
    An MoEMLP is compressed expert by expert (expert e with key `fold_in(key, e)`; magnitude:
    one threshold over its experts), its router and top_k unchanged.
    """
    opts = _options(method, options)
    _check_activation(activation)
    _check_block(block, method, width, opts)
    if _sub_blocks(block) is None:
        return _dispatch(block, method, width, key, opts)
    units, keys = _units({0: block}, {0: key})
    if method == "magnitude":
        masked = _magnitude_mask(list(units.values()), float(opts["sparsity"]))
        return _assemble({0: block}, dict(zip(units, masked)))[0]
    return _assemble({0: block}, {u: _dispatch(b, method, width, keys[u], opts) for u, b in units.items()})[0]


# A "unit" is what one method call compresses: layer l's block (unit l), or for a container
# (MoEMLP) its expert e (unit (l, e)) with key fold_in(key of layer l, e).

def _units(blocks: dict, keys: dict) -> tuple:
    """({unit: block}, {unit: key}) of `blocks` {layer: block} with per-layer `keys`."""
    ub, uk = {}, {}
    for l, b in blocks.items():
        subs = _sub_blocks(b)
        if subs is None:
            ub[l], uk[l] = b, keys[l]
            continue
        for e, s in enumerate(subs):
            ub[(l, e)], uk[(l, e)] = s, None if keys[l] is None else jax.random.fold_in(keys[l], e)
    return ub, uk


def _assemble(blocks: dict, new: dict) -> dict:
    """{layer: new block} from the compressed units `new` (a container gets its new experts)."""
    out = {}
    for l, b in blocks.items():
        subs = _sub_blocks(b)
        out[l] = new[l] if subs is None else b.with_sub_blocks([new[(l, e)] for e in range(len(subs))])
    return out


def _layer_blocks(params, layers, key, method, width, opts):
    """(layers, {layer: block}, {layer: key}) after the checks `compress` and `kmeans_layers` share;
    layer layers[i] gets `jax.random.split(key, len(layers))[i]`."""
    layers = list(check_layers(layers, len(params["layers"]), error=CompressionError))
    blocks = {l: params["layers"][l]["mlp"] for l in layers}
    for l, b in blocks.items():
        _check_block(b, method, width, opts, where=f"layer {l}: ")
    return layers, blocks, dict(zip(layers, jax.random.split(key, len(layers))))


def _kmeans_of_blocks(blocks: dict, width, keys: dict, opts, devices="auto") -> dict:
    """{layer: KMeansResult}; layers with blocks of equal shape run batched in one jitted call
    (split across `devices` when there are several)."""
    groups, out = {}, {}
    for l, b in blocks.items():
        groups.setdefault((type(b).__name__, b.neuron_features().shape), []).append(l)
    for group in groups.values():
        Xs = jnp.stack([blocks[l].neuron_features() for l in group])
        ks = jnp.stack([keys[l] for l in group])
        km = run_batched(Xs, ks, opts["tol"], width, opts["n_init"], opts["max_iter"], devices)
        for i, l in enumerate(group):
            out[l] = jax.tree_util.tree_map(lambda a: a[i], km)
    return out


def kmeans_layers(params: dict, layers: Sequence[int], width: int, key, *, devices="auto", **options) -> dict:
    """{layer: KMeansResult}: exactly the k-means that `compress(cfg, params, "fusion" or
    "cluster", layers, width, key, **options)` runs (options n_init, max_iter, tol). Pass it
    back as `compress(..., kmeans_result=...)` so that fusion and cluster share one k-means
    (METHOD.md: cluster uses the same k-means) instead of each running it. `devices`: as
    `compress`. For an MoE layer the entry is a tuple with one KMeansResult per expert."""
    opts = _options("fusion", options)
    _, blocks, keys = _layer_blocks(params, layers, key, "fusion", width, opts)
    units, ukeys = _units(blocks, keys)
    km = _kmeans_of_blocks(units, width, ukeys, opts, devices)
    return {l: km[l] if _sub_blocks(b) is None else tuple(km[(l, e)] for e in range(len(_sub_blocks(b))))
            for l, b in blocks.items()}


def _check_kmeans_result(km, blocks, width) -> dict:
    """{unit: KMeansResult} from `kmeans_result` {layer: KMeansResult, or a tuple per expert}."""
    if not isinstance(km, dict) or set(km) != set(blocks):
        got = sorted(km) if isinstance(km, dict) else type(km).__name__
        raise CompressionError(f"kmeans_result must be a dict {{layer: KMeansResult}} for layers "
                               f"{sorted(blocks)} (from kmeans_layers), got {got}")
    units, _ = _units(blocks, {l: None for l in blocks})
    out = {}
    for u, b in units.items():
        if isinstance(u, tuple):
            l, e = u
            entry = km[l]
            if not isinstance(entry, tuple) or len(entry) != len(_sub_blocks(blocks[l])):
                raise CompressionError(f"kmeans_result[{l}] must be a tuple of one KMeansResult per expert "
                                       f"({len(_sub_blocks(blocks[l]))}), from kmeans_layers")
            r, name = entry[e], f"kmeans_result[{l}][{e}]"
        else:
            r, name = km[u], f"kmeans_result[{u}]"
        want = (int(width), int(b.neuron_features().shape[1]))
        if tuple(r.centroids.shape) != want or int(np.sum(np.asarray(r.counts))) != b.width:
            raise CompressionError(f"{name} does not fit layer {u if not isinstance(u, tuple) else u[0]} at width "
                                   f"{width}: centroids {tuple(r.centroids.shape)}, expected {want}, counts summing "
                                   f"to {b.width}")
        out[u] = r
    return out


def compress(cfg, params: dict, method: str, layers: Sequence[int], width: int, key, *, kmeans_result=None,
             devices="auto", **options) -> dict:
    """New params with the MLPs of `layers` compressed by `method` (via `replace_mlps`).

    Layer layers[i] uses key `jax.random.split(key, len(layers))[i]`, so it equals
    `compress_block(get_mlp(params, layers[i]), method, width, keys[i])` (k-means for all
    layers of equal shape runs batched in one jitted call). `magnitude` uses one global
    threshold over the chosen layers' W1 and W2 (gated: W_gate, W_up, W_down; MoE: every expert's). An MoE layer (MoEMLP) is compressed expert by
    expert to width `width` each, expert e with key `fold_in(keys[i], e)`, its router untouched
    (docs/moe.md). fusion/cluster: `kmeans_result` (from
    `kmeans_layers` with the same params, layers, width, key and k-means options) skips
    the k-means; the caller vouches that it was computed with those arguments. `devices`:
    "auto" (all local devices when more than one), None or 1, a count, devices or a Mesh: the
    batched k-means splits its layers across them (same results as one device).
    """
    opts = _options(method, options)
    _check_activation(cfg.activation)
    layers, blocks, keys = _layer_blocks(params, layers, key, method, width, opts)
    units, ukeys = _units(blocks, keys)
    ukm = None
    if kmeans_result is not None:
        if method not in KMEANS_METHODS:
            raise CompressionError(f"kmeans_result applies to fusion and cluster only, not {method!r}")
        ukm = _check_kmeans_result(kmeans_result, blocks, width)

    if method == "magnitude":
        masked = _magnitude_mask(list(units.values()), float(opts["sparsity"]))
        return replace_mlps(params, _assemble(blocks, dict(zip(units, masked))))

    if method in KMEANS_METHODS:
        km = ukm if ukm is not None else _kmeans_of_blocks(units, width, ukeys, opts, devices)
        new = {u: _dispatch(b, method, width, ukeys[u], opts, km=km[u]) for u, b in units.items()}
    else:
        new = {u: _dispatch(b, method, width, ukeys[u], opts) for u, b in units.items()}
    return replace_mlps(params, _assemble(blocks, new))
