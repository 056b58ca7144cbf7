"""Empirical NTK engine (METHOD.md §3).

G (N × P) stacks g(x_i) = ∇_θ f(x_i) over the selected parameters. Kernels:

    "ntk"       K = G Gᵀ
    "sign"      K = G sign(G)ᵀ          (Adam / sign-GD NTK, asymmetric)
    "sign_sym"  K = sign(G) sign(G)ᵀ

and, with `batch2`, the cross-kernels G1 G2ᵀ, G1 sign(G2)ᵀ, sign(G1) sign(G2)ᵀ.

Strategies (chosen by `plan_kernels` from a cost model and a memory budget):

- "full": per-example gradients of every selected leaf for all N examples, in one
  jitted call: `vmap(grad(f))` over chunks of `chunk` examples (`lax.map`, so memory
  for activations is bounded), then K += G_l G_lᵀ leaf by leaf in float32. Peak ≈
  bytes(G) + one leaf's sign(G_l) + activations of one chunk.
- "blocks": the selected leaves are packed into parameter blocks of at most
  `param_block` parameters; for each block the gradients (w.r.t. that block only, so
  back-propagation stops at its lowest layer) of all N examples are formed and its
  Gram added. Peak ≈ bytes(G_block); needed for N = 1024 on roberta-base shapes,
  where the full G would be 155 GB.
- "tokens" (vanilla kernel only, Jacobian-free): for a dense map y_t = W u_t + b of a
  sequence, g_W(x) = Σ_t δ_t u_tᵀ with δ_t = ∂f/∂y_t, hence

      ⟨g_W(x), g_W(x')⟩ = Σ_{t,s} (δ_t·δ'_s)(u_t·u'_s),   ⟨g_b, g_b'⟩ = (Σ_t δ_t)·(Σ_s δ'_s).

  δ comes from one batched backward w.r.t. zero "probes" added to the MLP's
  pre-activation and output; u from the forward. Cost 2·N1·N2·T1·T2·(out+in) per
  matrix instead of 2·N1·N2·out·in (+ 2·N·T·out·in to form G): cheaper when
  T1·T2·(out+in) < out·in, i.e. short sequences or very wide layers; memory is
  N·T·(out+in) instead of N·out·in. Applies when every selected leaf is named in its
  block's `token_grads` (DenseMLP, FusedMLP: w1, b1, w2, b2).

Every per-chunk computation is a pure function of (params, chunk of examples), so
chunks can be sharded across devices (`kernels(..., devices=)`: "full", "blocks" and
"layers" split the examples; "tokens" runs on one device). FusedMLP counts are fixed leaves: never
selected (no gradient is formed for them), they scale the forward as arguments of the compiled
kernels, so fusion results of equal shapes share one program whatever their cluster sizes.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from .. import sharding
from ..compile import autotune as _autotune_ctx, autotuning as compile_autotuning, oneshot_jit
from ..dtypes import as_dtype
from ..frozen import cast_floating
from ..models import check_batch
from ..models.blocks import Probed, Probes, activation_fn
from .outputs import class_prob
from .selectors import Selector, SelectorError, all_mlps, leaf_paths, restrict

KINDS = ("ntk", "sign", "sign_sym")
STRATEGIES = ("auto", "full", "layers", "blocks", "tokens")
GRAM_PRECISIONS = ("highest", "bf16x3", "bf16x6", "bf16x9")
GRAM_IMPLS = ("auto", "split", "preset")
_BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "target_mask",
               "decoder_input_ids", "decoder_attention_mask")
_CPU_BUDGET = 4 * 2**30


class NTKConfigError(ValueError):
    """Invalid arguments to the NTK engine (unknown kind/strategy, bad chunk, ...)."""


# --------------------------------------------------------------------------- helpers


def _prepare(cfg, batch, output) -> dict:
    if "input_ids" not in batch:
        raise NTKConfigError(f"batch needs 'input_ids'; got keys {sorted(batch)}")
    check_batch(cfg, batch)
    ids = np.asarray(batch["input_ids"])
    out = {k: jnp.asarray(batch[k]) for k in _BATCH_KEYS if batch.get(k) is not None}
    if "attention_mask" not in out:
        out["attention_mask"] = jnp.ones(ids.shape, jnp.int32)
    if "decoder_input_ids" in out and "decoder_attention_mask" not in out:
        out["decoder_attention_mask"] = jnp.ones(out["decoder_input_ids"].shape, jnp.int32)
    for k in getattr(output, "needs", lambda: ())():
        if k not in out:
            raise NTKConfigError(f"output {output} needs batch[{k!r}]")
    return out


def _engine_cfg(cfg, scan_layers):
    """`cfg` with the layer stack scanned or unrolled as the engine was asked (a compile-time
    and speed choice; the numbers agree within float32 round-off)."""
    scan_layers = bool(scan_layers)
    return cfg if cfg.scan_layers == scan_layers else cfg.replace(scan_layers=scan_layers)


def _dtype(compute_dtype):
    """The dtype names of `ntkfuse.dtypes.as_dtype`, as a scalar type; None stays None."""
    if compute_dtype is None:
        return None
    try:
        return jnp.dtype(as_dtype(compute_dtype)).type
    except ValueError as e:
        raise NTKConfigError(f"compute_dtype: {e}") from None


def default_memory_budget() -> int:
    """80% of the first device's memory when the backend reports it, else 4 GiB."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(0.8 * stats["bytes_limit"])
    return _CPU_BUDGET


def balanced_chunk(n: int, cap: int) -> int:
    """Largest chunk ≤ cap that splits n examples into ceil(n / cap) nearly equal chunks, so the
    padding of the last chunk is < the number of chunks (128 with cap 79 → 2 chunks of 64, not 79 + 49);
    but a divisor of n at least 3/4 of that chunk instead, when there is one (4096 with cap 39 → 32, not
    39 with 38 padded rows): padded rows are wasted work, and at N = 4096 the `layers` strategy's
    Gram operands with 4134 rows instead of 4096 ran 14 % slower on an H100."""
    cap = max(1, min(int(cap), int(n)))
    n_chunks = -(-n // cap)
    c = -(-n // n_chunks)
    for d in range(c, -(-3 * c // 4) - 1, -1):
        if n % d == 0:
            return d
    return c


def _chunked_map(fn, batch, n, chunk, keep_padding=False):
    """fn(batch_chunk) -> pytree with leading axis c, mapped over chunks with lax.map; result axis n
    (with `keep_padding`, ceil(n / chunk) · chunk: the caller drops the padded rows itself).

    The last chunk is padded with copies of example 0. A caller that multiplies the result in
    the same program keeps the padding and slices the product instead: on an H100 without Triton
    GEMMs, XLA fused the row slice into the Gram's dot and summed it with 3.5e-3 relative error
    (37.8M-long float32 dot products), where cuBLAS on the unsliced rows agrees with the
    unpadded kernel to 1e-6."""
    if chunk >= n:
        return fn(batch)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n

    def reshape(a):
        if pad:
            a = jnp.concatenate([a, jnp.broadcast_to(a[:1], (pad,) + a.shape[1:])])
        return a.reshape((n_chunks, chunk) + a.shape[1:])

    out = jax.lax.map(fn, jax.tree_util.tree_map(reshape, batch))
    keep = n_chunks * chunk if keep_padding else n
    return jax.tree_util.tree_map(lambda a: a.reshape((n_chunks * chunk,) + a.shape[2:])[:keep], out)


def padded_rows(n: int, chunk: int) -> int:
    """Rows `_chunked_map(..., keep_padding=True)` returns for n examples in chunks of `chunk`."""
    return n if chunk >= n else -(-n // chunk) * chunk


# --------------------------------------------------------------------------- explicit gradients


def _grads_tree(cfg, output, sel, rest, batch, chunk, keep_padding=False):
    def f(s, ex):
        return output(cfg, Selector.merge(s, rest), ex)

    g1 = jax.vmap(jax.grad(f), in_axes=(None, 0))
    n = batch["input_ids"].shape[0]
    return _chunked_map(lambda b: g1(sel, b), batch, n, chunk, keep_padding)


@oneshot_jit(static_argnames=("cfg", "output", "chunk", "dtype"))
def _grads_jit(sel, rest, batch, *, cfg, output, chunk, dtype):
    return _grads_tree(cfg, output, cast_floating(sel, dtype), cast_floating(rest, dtype), batch, chunk)


def _flat(tree, n):
    return [leaf.reshape(n, -1) for leaf in jax.tree_util.tree_leaves(tree)]


_SPLIT_PAIRS = {"bf16x3": ((0, 0), (0, 1), (1, 0)),
                "bf16x6": ((0, 0), (0, 1), (1, 0), (0, 2), (2, 0), (1, 1)),
                "bf16x9": ((0, 0), (0, 1), (1, 0), (0, 2), (2, 0), (1, 1), (1, 2), (2, 1), (2, 2))}
_PRESETS = {"bf16x3": "BF16_BF16_F32_X3", "bf16x6": "BF16_BF16_F32_X6", "bf16x9": "BF16_BF16_F32_X9"}


# Gram products are skinny: an N × N output from a contraction over a whole leaf (2.36 M columns for
# a roberta-base MLP matrix). Compiled without Triton GEMMs (ntkfuse.compile's default) cuBLAS ran
# G Gᵀ + G sign(G)ᵀ at N = 128 at 27 TFLOP/s on an H100. Cut into b pieces along K, one batched
# product (one 128 × 128 output tile per piece) and a sum over the pieces ran at up to 37 TFLOP/s,
# the autotuned Triton kernel's speed and accuracy, but only when the b tiles fill the GPU's SMs in
# whole waves: 256 pieces (1.94 waves on 132 SMs) 66 ms, 288 pieces (2.18 waves) 88 ms, 144 pieces
# 102 ms (docs/bench/gram_h100.json). So b is chosen for wave efficiency.
SPLIT_K_MIN, SPLIT_K_MAX, GEMM_TILE = 2048, 32768, 128


@functools.lru_cache(maxsize=None)
def _sm_count() -> int:
    """Streaming multiprocessors of the first GPU (132 on an H100 SXM when the runtime does not say)."""
    return int(getattr(jax.devices()[0], "core_count", 0) or 132)


def _split_k_pieces(p: int, n: int, m: int, sms: int) -> int:
    """Pieces b (a divisor of p, each SPLIT_K_MIN..SPLIT_K_MAX long) to cut the contraction of an
    (n × p)(p × m) product into: with at least 1.5 waves of output tiles, the fewest whose wave
    efficiency (waves / whole waves) is within 3 points of the best. 1 when the output alone fills
    the GPU or p has no such divisor."""
    tiles = -(-n // GEMM_TILE) * -(-m // GEMM_TILE)
    if tiles >= 2 * sms or p < 2 * SPLIT_K_MIN:
        return 1
    effs = {}
    for b in range(max(-(-p // SPLIT_K_MAX), -(-3 * sms // (2 * tiles))), p // SPLIT_K_MIN + 1):
        if p % b == 0:
            waves = b * tiles / sms
            effs[b] = waves / math.ceil(waves)
    if not effs:
        return 1
    top = max(effs.values())
    return min(b for b, e in effs.items() if e >= top - 0.03)


def _split_k_applies() -> bool:
    """Long Gram contractions are cut into pieces on GPUs when GEMMs are not autotuned (Triton's
    autotuned kernels split K themselves); elsewhere XLA's dot is left alone."""
    return jax.default_backend() == "gpu" and not compile_autotuning()


def _dot_t(x, y, precision=jax.lax.Precision.HIGHEST):
    """x yᵀ with float32 accumulation (HIGHEST: true fp32 FMA, no TF32); long contractions on a GPU
    without autotuning as a batched product over K pieces, summed after (see SPLIT_K_MIN)."""
    p = x.shape[1]
    b = _split_k_pieces(p, x.shape[0], y.shape[0], _sm_count()) if _split_k_applies() else 1
    if b == 1:
        return jax.lax.dot_general(x, y, (((1,), (1,)), ((), ())), precision=precision,
                                   preferred_element_type=jnp.float32)
    xr, yr = x.reshape(x.shape[0], b, p // b), y.reshape(y.shape[0], b, p // b)
    parts = jax.lax.dot_general(xr, yr, (((2,), (2,)), ((1,), (1,))), precision=precision,
                                preferred_element_type=jnp.float32)         # (b, n, m)
    return parts.sum(0)


def _resolve_impl(impl):
    """"auto": XLA's presets on GPU (the explicit split's bf16 dots measured only ~5e-5 accurate on an
    H100 under XLA), the explicit split elsewhere (XLA:CPU has no presets)."""
    if impl != "auto":
        return impl
    return "preset" if jax.default_backend() == "gpu" else "split"


def _piece_dot(x, y):
    """x yᵀ of bf16 pieces with fp32 accumulation: bf16 tensor cores on GPU; on CPU the pieces are
    widened to f32 first (exact), since XLA:CPU's bf16 dot accumulates less precisely (~5e-6)."""
    if jax.default_backend() == "cpu":
        return _dot_t(x.astype(jnp.float32), y.astype(jnp.float32))
    return _dot_t(x, y, jax.lax.Precision.DEFAULT)


def split_bf16(x):
    """x (float32) = hi + mid + lo + O(2⁻²⁴|x|), each piece the bf16 rounding of the remainder."""
    x = x.astype(jnp.float32)
    hi = x.astype(jnp.bfloat16)
    r = x - hi.astype(jnp.float32)
    mid = r.astype(jnp.bfloat16)
    lo = (r - mid.astype(jnp.float32)).astype(jnp.bfloat16)
    return hi, mid, lo


def _gram_ntk(a, b, gram, impl, same):
    if gram == "highest" or a.dtype != jnp.float32:
        return _dot_t(a, b)
    if impl == "preset":
        return _dot_t(a, b, getattr(jax.lax.DotAlgorithmPreset, _PRESETS[gram]))
    pa = split_bf16(a)
    pb = pa if same else split_bf16(b)
    out = jnp.zeros((a.shape[0], b.shape[0]), jnp.float32)
    for i, j in reversed(_SPLIT_PAIRS[gram]):          # small terms first
        if same and i > j:
            continue                                   # A_j A_iᵀ = (A_i A_jᵀ)ᵀ, added below
        t = _piece_dot(pa[i], pb[j])
        out = out + (t + t.T if same and i != j else t)
    return out


def _gram_sign(a, sb, gram, impl):
    """A sign(B)ᵀ. "split": sign is exact in bf16, so every bf16 scheme uses A's three bf16 pieces
    (3 products); "preset": XLA's BF16_BF16_F32_X* algorithm on (A, sign B)."""
    if gram == "highest" or a.dtype != jnp.float32:
        return _dot_t(a, sb)
    if impl == "preset":
        return _dot_t(a, sb, getattr(jax.lax.DotAlgorithmPreset, _PRESETS[gram]))
    sb = sb.astype(jnp.bfloat16)
    out = jnp.zeros((a.shape[0], sb.shape[0]), jnp.float32)
    for piece in reversed(split_bf16(a)):
        out = out + _piece_dot(piece, sb)
    return out


def _gram_add(acc, a_list, b_list, kinds, gram="highest", impl="split"):
    """acc[kind] += Σ_leaves A_l op(B_l)ᵀ in float32 (`gram`: fp32 FMA or a bf16-split scheme)."""
    same = a_list is b_list
    for a, b in zip(a_list, b_list):
        if "ntk" in kinds:
            acc["ntk"] = acc["ntk"] + _gram_ntk(a, b, gram, impl, same)
        if "sign" in kinds or "sign_sym" in kinds:
            sb = jnp.sign(b)
            if "sign" in kinds:
                acc["sign"] = acc["sign"] + _gram_sign(a, sb, gram, impl)
            if "sign_sym" in kinds:
                sa = sb if same else jnp.sign(a)
                acc["sign_sym"] = acc["sign_sym"] + _dot_t(sa, sb)
    return acc


@oneshot_jit(static_argnames=("cfg", "output", "kinds", "chunk", "dtype", "gram", "impl"))
def _kernels_explicit(sel, rest, batch, batch2, *, cfg, output, kinds, chunk, dtype, gram, impl):
    sel, rest = cast_floating(sel, dtype), cast_floating(rest, dtype)
    n1 = batch["input_ids"].shape[0]
    p1 = padded_rows(n1, chunk)     # the Gram runs on the padded rows; its padded rows are dropped after
    a = _flat(_grads_tree(cfg, output, sel, rest, batch, chunk, keep_padding=True), p1)
    if batch2 is None:
        b, n2, p2 = a, n1, p1
    else:
        n2 = batch2["input_ids"].shape[0]
        p2 = padded_rows(n2, chunk)
        b = _flat(_grads_tree(cfg, output, sel, rest, batch2, chunk, keep_padding=True), p2)
    acc = {k: jnp.zeros((p1, p2), jnp.float32) for k in kinds}
    return {k: v[:n1, :n2] for k, v in _gram_add(acc, a, b, kinds, gram, impl).items()}


@oneshot_jit(static_argnames=("mesh", "cfg", "output", "kinds", "chunk", "dtype", "gram", "impl"))
def _kernels_explicit_mesh(sel, rest, batch, batch2, *, mesh, cfg, output, kinds, chunk, dtype, gram, impl):
    """`_kernels_explicit` with the examples split across `mesh` (batches already padded and placed
    row-sharded): each device forms the per-example gradients of its examples (`shard_map`, the
    same vmapped chunks as on one device), and the Gram products of the row-sharded G are left to
    XLA's partitioner, which gathers the factors it needs."""
    sel, rest = cast_floating(sel, dtype), cast_floating(rest, dtype)
    rows = P(sharding.mesh_axis(mesh))

    def local_grads(s, r, b):   # per-example gradients are local: no reduction over devices
        return _flat(_grads_tree(cfg, output, s, r, b, chunk), b["input_ids"].shape[0])

    grads = jax.shard_map(local_grads, mesh=mesh, in_specs=(P(), P(), rows), out_specs=rows, check_vma=False)
    a = grads(sel, rest, batch)
    b = a if batch2 is None else grads(sel, rest, batch2)
    n1, n2 = a[0].shape[0], b[0].shape[0]
    acc = {k: jnp.zeros((n1, n2), jnp.float32) for k in kinds}
    return _gram_add(acc, a, b, kinds, gram, impl)


def _full_on_mesh(mesh, s, r, b1, b2, *, chunk, **kw):
    n1 = b1["input_ids"].shape[0]
    n2 = n1 if b2 is None else b2["input_ids"].shape[0]
    m = sharding.size(mesh)
    c = balanced_chunk(sharding.padded(max(n1, n2), mesh) // m, chunk)

    def place(b):   # every device's rows a whole number of chunks: no padding (and no row slice) inside
        per = sharding.padded(b["input_ids"].shape[0], mesh) // m
        return sharding.shard_rows(sharding.pad_rows(b, m * padded_rows(per, c)), mesh)

    out = _kernels_explicit_mesh(sharding.replicate(s, mesh), sharding.replicate(r, mesh), place(b1),
                                 None if b2 is None else place(b2), mesh=mesh, chunk=c, **kw)
    return {k: sharding.to_default_device(v[:n1, :n2]) for k, v in out.items()}


# --------------------------------------------------------------------------- Jacobian-free (tokens)


_FACTORS = ("d1", "u1", "d2", "u2")   # δ1 (T,D), u1 (T,d), δ2 (T,d), u2 (T,D) per example


def _probe_factors(cfg, output, params, batch, layers, want=_FACTORS):
    """{layer: tuple of the `want` factors, each (N, T, ·)} from ONE batched forward + backward."""
    n, t = batch["input_ids"].shape
    dt = params["layers"][layers[0]]["mlp"].neuron_view().w1.dtype

    def zeros(l, f):
        return jnp.zeros((n, t, params["layers"][l]["mlp"].factor_widths()[f]), dt)

    probes = {l: {f: zeros(l, f) for f in want} for l in layers}

    def inject(pr):
        lays = list(params["layers"])
        for l in layers:
            lays[l] = dict(lays[l], mlp=Probed(lays[l]["mlp"], Probes(**pr[l])))
        return {**params, "layers": lays}

    def total(pr):
        one = lambda q, ex: output(cfg, inject(q), ex)  # noqa: E731
        return jnp.sum(jax.vmap(one)(pr, batch))

    g = jax.grad(total)(probes)
    return {l: tuple(g[l][f] for f in want) for l in layers}


def _token_factors(cfg, output, params, batch, layers):
    """Per layer: (δ1 (N,T,D), u1 (N,T,d), δ2 (N,T,d), u2 (N,T,D))."""
    return _probe_factors(cfg, output, params, batch, layers, _FACTORS)


# --------------------------------------------------------------------------- per-layer (compile once)


@oneshot_jit(static_argnames=("cfg", "output", "layers", "chunk", "dtype"))
def _layer_inputs(params, batch, *, cfg, output, layers, chunk, dtype):
    """(u1, δ2) of every selected MLP for all N examples, `chunk` examples per forward/backward; rows
    `padded_rows(N, chunk)`: slicing the padding off here copied all factors (25.8 GB at N = 4096,
    chunk 39 on an H100, over the memory budget), so the caller drops the padded rows of the kernel."""
    params = cast_floating(params, dtype)
    n = batch["input_ids"].shape[0]
    return _chunked_map(lambda b: _probe_factors(cfg, output, params, b, layers, ("u1", "d2")), batch, n, chunk,
                        keep_padding=True)


def _layer_parts(block, u1, d2, c, dc, names, act):
    """Per-example gradient columns of one D-chunk c (width dc) of a block's neuron view, recomputing
    z, u2 = σ(z)·n and δ1 = σ'(z)·n·(δ2 W2) from (u1, δ2): [g_W1[c], g_b1[c], g_W2[:, c]], each (N, ·)."""
    n = u1.shape[0]
    view = block.neuron_view()
    w1c = jax.lax.dynamic_slice_in_dim(view.w1, c * dc, dc, 0).astype(u1.dtype)
    w2c = jax.lax.dynamic_slice_in_dim(view.w2, c * dc, dc, 1).astype(u1.dtype)
    z = jnp.einsum("ntd,cd->ntc", u1, w1c)
    if view.b1 is not None:
        z = z + jax.lax.dynamic_slice_in_dim(view.b1, c * dc, dc, 0).astype(u1.dtype)
    h, act_vjp = jax.vjp(act, z)
    dh = jnp.einsum("ntk,kc->ntc", d2, w2c)
    if view.scale is not None:
        sc = jax.lax.dynamic_slice_in_dim(view.scale.astype(u1.dtype), c * dc, dc, 0)
        h, dh = h * sc, dh * sc
    out = []
    if "w1" in names or "b1" in names:
        dz = act_vjp(dh)[0]
        if "w1" in names:
            out.append(jnp.einsum("ntc,ntd->ncd", dz, u1).reshape(n, -1))
        if "b1" in names:
            out.append(dz.sum(1))
    if "w2" in names:
        out.append(jnp.einsum("ntk,ntc->nkc", d2, h).reshape(n, -1))
    return out


@oneshot_jit(static_argnames=("names", "kinds", "activation", "d_chunks", "gram", "impl"))
def _layer_gram(block, fa, fb, *, names, kinds, activation, d_chunks, gram, impl):
    """Σ over this layer's selected leaves of G_a op(G_b)ᵀ, G formed D-chunk by D-chunk from (u1, δ2).
    Its arguments have the same shapes for every layer of a model, so one executable serves them all."""
    act = activation_fn(activation)
    n1, n2 = fa[0].shape[0], (fa if fb is None else fb)[0].shape[0]
    dc = block.w1.shape[0] // d_chunks

    def body(acc, c):
        a = _layer_parts(block, *fa, c, dc, names, act)
        b = a if fb is None else _layer_parts(block, *fb, c, dc, names, act)
        return _gram_add(acc, a, b, kinds, gram, impl), None

    acc = {k: jnp.zeros((n1, n2), jnp.float32) for k in kinds}
    if names != ("b2",):
        acc, _ = jax.lax.scan(body, acc, jnp.arange(d_chunks))
    if "b2" in names:
        a = [fa[1].sum(1)]
        acc = _gram_add(acc, a, a if fb is None else [fb[1].sum(1)], kinds, gram, impl)
    return acc


@oneshot_jit(static_argnames=("mesh", "cfg", "output", "layers", "chunk", "dtype"))
def _layer_inputs_mesh(params, batch, *, mesh, cfg, output, layers, chunk, dtype):
    """`_layer_inputs` with the examples split across `mesh` (batch padded and placed row-sharded,
    params replicated): (u1, δ2) are per-example, so each device runs the same chunked forward +
    backward on its own examples (`shard_map`, no reduction over devices); results row-sharded."""
    params = cast_floating(params, dtype)
    rows = P(sharding.mesh_axis(mesh))

    def local(pr, b):
        n = b["input_ids"].shape[0]
        return _chunked_map(lambda bc: _probe_factors(cfg, output, pr, bc, layers, ("u1", "d2")), b, n, chunk)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), rows), out_specs=rows, check_vma=False)(params, batch)


@oneshot_jit(static_argnames=("mesh", "names", "kinds", "activation", "d_chunks", "gram", "impl"))
def _layer_gram_mesh(block, fa, fb, *, mesh, names, kinds, activation, d_chunks, gram, impl):
    """`_layer_gram` with the factors row-sharded over `mesh` (rows padded to a multiple of its size).
    Per D-chunk, each device forms the gradient columns of its own examples (`shard_map`), and the
    kernel's row block of each device is its rows of G_a times ALL rows of G_b: the b-side columns
    enter a `shard_map` whose in_spec is replicated, so XLA's partitioner gathers them (no
    hand-written collective). The kernel comes back row-sharded. Both sides are passed as distinct
    operands (no `same` shortcut, whose transpose would cross devices), so "bf16x*" sums its cross
    terms in another order than one device: equal within float32 round-off."""
    act = activation_fn(activation)
    rows = P(sharding.mesh_axis(mesh))
    n1, n2 = fa[0].shape[0], (fa if fb is None else fb)[0].shape[0]
    dc = block.w1.shape[0] // d_chunks
    parts = jax.shard_map(lambda blk, u1, d2, c: _layer_parts(blk, u1, d2, c, dc, names, act), mesh=mesh,
                          in_specs=(P(), rows, rows, P()), out_specs=rows, check_vma=False)
    add = jax.shard_map(lambda acc, a, b: _gram_add(dict(acc), a, b, kinds, gram, impl), mesh=mesh,
                        in_specs=(rows, rows, P()), out_specs=rows, check_vma=False)

    def body(acc, c):
        a = parts(block, fa[0], fa[1], c)
        b = a if fb is None else parts(block, fb[0], fb[1], c)
        return add(acc, a, b), None

    acc = {k: jax.lax.with_sharding_constraint(jnp.zeros((n1, n2), jnp.float32), sharding.rows(mesh))
           for k in kinds}
    if names != ("b2",):
        acc, _ = jax.lax.scan(body, acc, jnp.arange(d_chunks))
    if "b2" in names:
        a = [fa[1].sum(1)]
        acc = add(acc, a, a if fb is None else [fb[1].sum(1)])
    return acc


def _layers_on_mesh(mesh, params, b1, b2, spec, d_chunks, *, cfg, output, chunk, dtype, kinds, gram, impl):
    """The "layers" strategy with the examples split across `mesh`: factors formed per device, the
    kernel's row blocks computed in parallel, then gathered to the default device."""
    n1 = b1["input_ids"].shape[0]
    n2 = n1 if b2 is None else b2["input_ids"].shape[0]
    local = balanced_chunk(sharding.padded(max(n1, n2), mesh) // sharding.size(mesh), chunk)
    layers = tuple(l for l, _ in spec)
    rep = sharding.replicate(params, mesh)
    kw = dict(mesh=mesh, cfg=cfg, output=output, layers=layers, chunk=local, dtype=dtype)
    fa = _layer_inputs_mesh(rep, sharding.shard_rows(b1, mesh), **kw)
    fb = None if b2 is None else _layer_inputs_mesh(rep, sharding.shard_rows(b2, mesh), **kw)
    out = None
    for (l, names), dch in zip(spec, d_chunks):
        block = cast_floating(rep["layers"][l]["mlp"], dtype)
        part = _layer_gram_mesh(block, fa[l], None if fb is None else fb[l], mesh=mesh, names=names, kinds=kinds,
                                activation=cfg.activation, d_chunks=dch, gram=gram, impl=impl)
        out = part if out is None else {k: out[k] + part[k] for k in kinds}
    return {k: sharding.to_default_device(v[:n1, :n2]) for k, v in out.items()}


def _pair_gram(da, ua, db, ub, rows):
    """Σ_{t,s} (δa_it·δb_js)(ua_it·ub_js), over row chunks of `rows` examples of a."""
    def f(c):
        d_c, u_c = c
        s1 = jnp.einsum("itk,jsk->ijts", d_c, db, preferred_element_type=jnp.float32)
        s2 = jnp.einsum("itk,jsk->ijts", u_c, ub, preferred_element_type=jnp.float32)
        return jnp.sum(s1 * s2, axis=(2, 3))

    n = da.shape[0]
    return _chunked_map(f, (da, ua), n, rows) if rows < n else f((da, ua))


@oneshot_jit(static_argnames=("cfg", "output", "spec", "rows", "dtype"))
def _kernels_tokens(params, batch, batch2, *, cfg, output, spec, rows, dtype):
    params = cast_floating(params, dtype)
    layers = tuple(l for l, _ in spec)
    fa = _token_factors(cfg, output, params, batch, layers)
    fb = fa if batch2 is None else _token_factors(cfg, output, params, batch2, layers)
    n1 = batch["input_ids"].shape[0]
    n2 = n1 if batch2 is None else batch2["input_ids"].shape[0]
    k = jnp.zeros((n1, n2), jnp.float32)
    for l, names in spec:
        a, b = dict(zip(_FACTORS, fa[l])), dict(zip(_FACTORS, fb[l]))
        for name, (delta, u) in params["layers"][l]["mlp"].token_grads.items():   # the block's own order
            if name not in names:
                continue
            if u is None:   # bias: g_b = Σ_t δ_t
                k = k + jnp.dot(a[delta].sum(1), b[delta].sum(1).T, preferred_element_type=jnp.float32)
            else:           # matrix: ⟨g_W, g_W'⟩ = Σ_{t,s} (δ_t·δ'_s)(u_t·u'_s)
                k = k + _pair_gram(a[delta], a[u], b[delta], b[u], rows)
    return {"ntk": k}


def _tokens_spec(params, paths):
    """((layer, names), ...) when every selected leaf is a leaf of an MLP block that declares how its
    per-example gradient factorises over tokens (`Block.token_grads`: DenseMLP, FusedMLP), else None."""
    spec: dict = {}
    for p in paths:
        if not (len(p) == 4 and p[0] == "layers" and p[2] == "mlp"):
            return None
        grads = params["layers"][p[1]]["mlp"].token_grads
        if grads is None or p[3] not in grads:
            return None
        spec.setdefault(p[1], set()).add(p[3])
    return tuple((l, tuple(sorted(v))) for l, v in sorted(spec.items()))


# --------------------------------------------------------------------------- planning


@dataclasses.dataclass(frozen=True)
class Plan:
    """What `kernels` will do and why (sizes in bytes, costs in FLOPs)."""
    strategy: str
    chunk: int
    blocks: tuple              # tuple of tuples of leaf paths ("full": one block)
    n_params: int
    g_bytes: int               # bytes of the full G (all N, all selected params)
    act_bytes_per_example: int
    budget: int
    flops: dict                # strategy -> estimated FLOPs of the Gram part
    rows: int = 0              # tokens strategy: row chunk
    d_chunks: tuple = ()       # layers strategy: per selected layer, chunks of its hidden width D
    gram_precision: str = "highest"
    gram_impl: str = "split"


def _act_bytes(cfg, t, itemsize):
    """Rough activation memory of one example's forward + backward (all layers kept)."""
    per_tok_layer = 12 * cfg.hidden + 4 * cfg.intermediate + 3 * cfg.num_heads * t
    b = t * cfg.num_layers * per_tok_layer * itemsize
    if cfg.head == "lm":
        b += 3 * t * cfg.vocab_size * 4
    return int(b)


def _d_chunks(width, per_col, room):
    """Smallest divisor k of `width` with (width / k) columns' bytes (`per_col` each) within `room`."""
    for k in range(1, width + 1):
        if width % k == 0 and (width // k) * per_col <= room:
            return k
    return width


def plan_kernels(cfg, params, batch, *, selector=None, kinds=("ntk", "sign"), batch2=None, chunk=None,
                 param_block=None, compute_dtype=None, strategy="auto", memory_budget_bytes=None,
                 gram_precision="highest", gram_impl="auto") -> Plan:
    """Choose a strategy by cost: the Jacobian-free path when only "ntk" is asked and it is
    cheaper in FLOPs; otherwise "full" when G fits the budget, else "layers" (MLP-only
    selections) or parameter "blocks". Example chunks are balanced (no wasted padded work)."""
    selector = all_mlps() if selector is None else selector
    if strategy not in STRATEGIES:
        raise NTKConfigError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise NTKConfigError(f"unknown kernel kinds {bad or kinds}; valid: {', '.join(KINDS)}")
    if gram_precision not in GRAM_PRECISIONS:
        raise NTKConfigError(f"unknown gram_precision {gram_precision!r}; valid: {', '.join(GRAM_PRECISIONS)}")
    if gram_impl not in GRAM_IMPLS:
        raise NTKConfigError(f"unknown gram_impl {gram_impl!r}; valid: {', '.join(GRAM_IMPLS)}")
    gram_impl = _resolve_impl(gram_impl)
    if gram_impl == "preset" and gram_precision != "highest" and jax.default_backend() != "gpu":
        raise NTKConfigError(f"gram_impl 'preset' needs a GPU (backend is {jax.default_backend()!r}); use 'split'")
    if chunk is not None and (not isinstance(chunk, (int, np.integer)) or chunk < 1):
        raise NTKConfigError(f"chunk must be a positive int, got {chunk!r}")
    if param_block is not None and (not isinstance(param_block, (int, np.integer)) or param_block < 1):
        raise NTKConfigError(f"param_block must be a positive int, got {param_block!r}")
    selector.validate(params)
    dtype = _dtype(compute_dtype)
    itemsize = 2 if dtype == jnp.bfloat16 else 4
    budget = int(memory_budget_bytes or default_memory_budget())
    n1, t1 = np.shape(batch["input_ids"])
    n2, t2 = (n1, t1) if batch2 is None else np.shape(batch2["input_ids"])
    nn = n1 if batch2 is None else n1 + n2
    nmax = max(n1, n2)
    flat = dict(zip(leaf_paths(params), jax.tree_util.tree_leaves(params)))
    paths = selector.paths(params)
    sizes = {p: int(np.prod(flat[p].shape)) for p in paths}
    n_params = sum(sizes.values())
    g_bytes = nn * n_params * itemsize
    act = _act_bytes(cfg, max(t1, t2), itemsize)
    fixed_chunk = chunk is not None
    biggest = max(sizes.values())
    # a leaf's sign (and its three bf16 pieces when the Gram is split) next to G; with the Gram split
    # along K on a GPU (`_dot_t`), XLA lays a leaf out piece-major: one more copy (measured at N = 1024:
    # peak 14.5 -> 17.9 GB)
    split_copy = int(_split_k_applies() and _split_k_pieces(biggest, nmax, nmax, _sm_count()) > 1)
    leaf_extra = nmax * biggest * (itemsize * (1 + split_copy) + (3 * 2 if gram_precision != "highest" else 0))
    if chunk is None:
        # "full": all N in one vmapped chunk when G + activations fit (no lax.map, no per-chunk copy of G);
        # else the largest balanced chunk whose activations and per-chunk G fit next to G.
        room = budget - g_bytes - leaf_extra
        if room >= nmax * act:
            chunk = nmax
        else:
            chunk = balanced_chunk(nmax, max(room, 0) // max(act + n_params * itemsize, 1))

    # FLOPs of the Gram part (both strategies share the backward pass).
    n_kinds = len(kinds)
    explicit = 2 * n1 * n2 * n_params * n_kinds + 2 * (n1 * t1 + (n2 * t2 if batch2 is not None else 0)) * n_params
    spec = _tokens_spec(params, paths)
    if spec is not None and cfg.is_encoder_decoder:
        # the Jacobian-free strategies build (N, T, ·) token factors of one sequence length; an
        # encoder-decoder's layers see two (encoder and decoder): explicit gradients only
        if strategy in ("tokens", "layers"):
            raise NTKConfigError(f"strategy {strategy!r} does not support encoder-decoder models "
                                 f"({cfg.family}); use 'full', 'blocks' or 'auto'")
        spec = None
    flops = {"full": explicit}
    if spec is not None:
        tok = 0
        for p in paths:
            shp = flat[p].shape
            tok += 2 * n1 * n2 * t1 * t2 * sum(shp) if len(shp) == 2 else 2 * n1 * n2 * shp[0]
        flops["tokens"] = tok
    if strategy == "tokens" and (spec is None or kinds != ("ntk",)):
        raise NTKConfigError("strategy 'tokens' needs kinds=('ntk',) and a selection of only w1/b1/w2/b2 of "
                             "DenseMLP/FusedMLP blocks")
    if strategy == "layers" and spec is None:
        raise NTKConfigError("strategy 'layers' needs a selection of only w1/b1/w2/b2 of DenseMLP/FusedMLP blocks")
    if strategy == "auto":
        if spec is not None and kinds == ("ntk",) and flops["tokens"] < flops["full"]:
            strategy = "tokens"
        elif param_block is not None:
            strategy = "blocks"
        else:
            chunk_g = 0 if chunk >= nmax else chunk * n_params * itemsize   # lax.map's per-chunk G
            need = g_bytes + leaf_extra + chunk * act + chunk_g
            strategy = "full" if need <= budget else ("layers" if spec is not None else "blocks")
    rows, d_chunks = 0, ()
    if strategy == "tokens":
        per_row = n2 * t1 * t2 * 4 * 3
        rows = int(max(1, min(n1, (budget // 4) // max(per_row, 1))))
        blocks = (tuple(paths),)
    elif strategy == "full":
        blocks = (tuple(paths),)
    elif strategy == "layers":
        blocks = tuple(tuple(p for p in paths if p[1] == l) for l, _ in spec)
        # The factors (u1, δ2) of every selected layer stay resident; what is left of the budget
        # goes a quarter to the chunked forward/backward and half to one D-chunk's gradient columns.
        factor_bytes = nn * max(t1, t2) * 2 * cfg.hidden * itemsize * len(spec)
        free = budget - factor_bytes
        if free <= 0:
            raise NTKConfigError(
                f"strategy 'layers' keeps every selected layer's factors (u1, δ2) resident: "
                f"{factor_bytes / 2**30:.1f} GiB for {nn} examples × {max(t1, t2)} tokens × {len(spec)} layers, "
                f"over the memory budget of {budget / 2**30:.1f} GiB; select fewer layers or examples, use "
                f"compute_dtype='bfloat16', or raise memory_budget_bytes")
        if not fixed_chunk:
            chunk = balanced_chunk(nmax, (free // 4) // max(act, 1))
        room = free // 2
        # per hidden unit: a row of W1, its bias, a column of W2, for both sets; G part + pieces + sign
        mult = 1 + (3 * 2 / itemsize if gram_precision != "highest" else 0) + 1 + split_copy
        per_col = int(nn * (2 * cfg.hidden + 1) * itemsize * mult)
        d_chunks = tuple(_d_chunks(params["layers"][l]["mlp"].width, per_col, room) for l, _ in spec)
    else:
        if not fixed_chunk:
            chunk = balanced_chunk(nmax, (budget // 8) // max(act, 1))
        if param_block is None:
            param_block = max(1, int((budget * 3 // 4 - chunk * act) // max(int(nn * itemsize * 2.5), 1)))
        blocks, cur, cur_n = [], [], 0
        for p in paths:
            if cur and cur_n + sizes[p] > param_block:
                blocks.append(tuple(cur))
                cur, cur_n = [], 0
            cur.append(p)
            cur_n += sizes[p]
        blocks.append(tuple(cur))
        blocks = tuple(blocks)
    return Plan(strategy, int(chunk), blocks, n_params, g_bytes, act, budget, flops, rows, d_chunks,
                gram_precision, gram_impl)


# --------------------------------------------------------------------------- public API


def kernels(cfg, params, batch, *, output=None, selector=None, kinds=("ntk", "sign"), batch2=None,
            chunk=None, param_block=None, compute_dtype=None, strategy="auto",
            memory_budget_bytes=None, gram_precision="highest", gram_impl="auto", return_plan=False,
            devices="auto", scan_layers=False, autotune=None):
    """Empirical NTKs {kind: (N1, N2) float32} of scalar `output` w.r.t. the `selector`'s params.

    output: default `class_prob(0)`; selector: default `all_mlps()`; kinds ⊆ KINDS;
    batch2: cross-kernel against a second set; chunk: examples per vmapped chunk;
    param_block: max parameters per block (forces "blocks" under "auto");
    compute_dtype: e.g. "bfloat16" (accumulation stays float32); strategy: one of
    STRATEGIES; memory_budget_bytes: default 80% of device memory (4 GiB on CPU);
    gram_precision: "highest" (fp32 FMA) or "bf16x3"/"bf16x6"/"bf16x9" (G split into three bf16
    pieces, products on bf16 tensor cores with fp32 accumulation; "sign" always uses all three
    pieces); gram_impl: "split" (explicit pieces), "preset" (XLA's DotAlgorithmPreset
    BF16_BF16_F32_X*, GPU only) or "auto" (preset on GPU, split elsewhere);
    devices: "auto" (all local devices when more than one), None or 1 (one device), a count,
    devices or a `Mesh` (`ntkfuse.sharding.make_mesh`). "full" and "blocks" (each parameter block
    in turn) split the examples across them: per-example gradients formed on each device, the Gram
    left to XLA's partitioner. "layers" splits the examples of the per-layer factors (u1, δ2) and
    the kernel's rows: each device computes its row block (its examples against all examples,
    the other side gathered by XLA) per D-chunk. Kernels and plan as on one device, within float32
    round-off. "tokens" always runs on one device (the default one) whatever `devices` says;
    scan_layers: run the layer stack as `lax.scan` over runs of identical layers (the selected
    layers form their own runs; same kernels within float32 round-off). Off by default: on an
    H100 at roberta-base shape it saved 6% of the first call (compilation is mostly XLA's
    autotuning, not the layer count) and cost 27% warm time and 63% more memory
    (docs/bench/first_call_h100.json);
    autotune: compile with XLA's autotuned Triton GEMMs (`ntkfuse.compile`): None follows
    `ntkfuse.compile.autotune(...)`, which is off by default: on an H100 a 7x faster first call
    for a warm call within 1.5% (0.209-0.213 s vs 0.210 s at roberta-base shape, N = 128).
    """
    with _autotune_ctx(autotune):
        cfg = _engine_cfg(cfg, scan_layers)
        mesh = sharding.make_mesh(devices)
        output = class_prob(0) if output is None else output
        selector = all_mlps() if selector is None else selector
        if not isinstance(selector, Selector):
            raise SelectorError(f"selector must be a Selector (mlp_layers, all_mlps, all_params, by_path), "
                                f"got {type(selector).__name__}")
        if hasattr(output, "check"):
            output.check(cfg)
        b1 = _prepare(cfg, batch, output)
        b2 = None if batch2 is None else _prepare(cfg, batch2, output)
        plan = plan_kernels(cfg, params, b1, selector=selector, kinds=kinds, batch2=b2, chunk=chunk,
                            param_block=param_block, compute_dtype=compute_dtype, strategy=strategy,
                            memory_budget_bytes=memory_budget_bytes, gram_precision=gram_precision,
                            gram_impl=gram_impl)
        kinds = tuple(kinds)
        gram = dict(gram=gram_precision, impl=plan.gram_impl)
        if gram_precision != "highest" and jax.default_backend() == "gpu" and not compile_autotuning():
            warnings.warn(f"gram_precision={gram_precision!r} without autotuning: on an H100 XLA's cuBLAS path made "
                          f"the bf16x6 Gram 1.9e-4 off and slower than 'highest' (with Triton GEMMs, autotune=True: "
                          f"1.7e-7); use autotune=True or gram_precision='highest'", stacklevel=2)
        dtype = _dtype(compute_dtype)
        if plan.strategy == "tokens":
            spec = _tokens_spec(params, list(plan.blocks[0]))
            out = _kernels_tokens(params, b1, b2, cfg=cfg, output=output, spec=spec, rows=plan.rows, dtype=dtype)
        elif plan.strategy == "layers" and mesh is not None:
            spec = _tokens_spec(params, [p for b in plan.blocks for p in b])
            out = _layers_on_mesh(mesh, params, b1, b2, spec, plan.d_chunks, cfg=cfg, output=output, chunk=plan.chunk,
                                  dtype=dtype, kinds=kinds, **gram)
        elif plan.strategy == "layers":
            spec = _tokens_spec(params, [p for b in plan.blocks for p in b])
            layers = tuple(l for l, _ in spec)
            fa = _layer_inputs(params, b1, cfg=cfg, output=output, layers=layers, chunk=plan.chunk, dtype=dtype)
            fb = None if b2 is None else _layer_inputs(params, b2, cfg=cfg, output=output, layers=layers,
                                                       chunk=plan.chunk, dtype=dtype)
            out = None
            for (l, names), dch in zip(spec, plan.d_chunks):
                block = cast_floating(params["layers"][l]["mlp"], dtype)
                part = _layer_gram(block, fa[l], None if fb is None else fb[l], names=names, kinds=kinds,
                                   activation=cfg.activation, d_chunks=dch, **gram)
                out = part if out is None else {k: out[k] + part[k] for k in kinds}
            n1 = b1["input_ids"].shape[0]
            n2 = n1 if b2 is None else b2["input_ids"].shape[0]
            out = {k: v[:n1, :n2] for k, v in out.items()}       # the factors' padded rows
        else:
            out = None
            for block in plan.blocks:
                sel = selector if plan.strategy == "full" else restrict(selector, block)
                s, r = sel.split(params)
                if mesh is not None:   # "full" or one parameter block: the examples split across the mesh
                    part = _full_on_mesh(mesh, s, r, b1, b2, cfg=cfg, output=output, kinds=kinds, chunk=plan.chunk,
                                         dtype=dtype, **gram)
                else:
                    part = _kernels_explicit(s, r, b1, b2, cfg=cfg, output=output, kinds=kinds, chunk=plan.chunk,
                                             dtype=dtype, **gram)
                out = part if out is None else {k: out[k] + part[k] for k in kinds}
        return (out, plan) if return_plan else out


def per_example_grads(cfg, params, batch, *, output=None, selector=None, chunk=None, compute_dtype=None,
                      scan_layers=False, autotune=None):
    """Per-example gradients: the selected sub-pytree (None elsewhere) with leaves (N, *shape).
    `autotune` as for `kernels`."""
    cfg = _engine_cfg(cfg, scan_layers)
    output = class_prob(0) if output is None else output
    selector = all_mlps() if selector is None else selector
    if hasattr(output, "check"):
        output.check(cfg)
    selector.validate(params)
    b = _prepare(cfg, batch, output)
    n = b["input_ids"].shape[0]
    s, r = selector.split(params)
    with _autotune_ctx(autotune):
        return _grads_jit(s, r, b, cfg=cfg, output=output, chunk=int(chunk or n), dtype=_dtype(compute_dtype))


def flatten_grads(grads) -> jax.Array:
    """(N, P) matrix from `per_example_grads` output, leaves in flatten order."""
    leaves = jax.tree_util.tree_leaves(grads)
    n = leaves[0].shape[0]
    return jnp.concatenate([l.reshape(n, -1) for l in leaves], axis=1)


__all__ = ["KINDS", "STRATEGIES", "GRAM_PRECISIONS", "GRAM_IMPLS", "balanced_chunk", "split_bf16", "NTKConfigError", "Plan", "plan_kernels", "kernels", "per_example_grads",
           "flatten_grads", "default_memory_budget"]
