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
  N·T·(out+in) instead of N·out·in. Applies when every selected leaf is a w1/b1/w2/b2
  of a DenseMLP or FusedMLP.

Every per-chunk computation is a pure function of (params, chunk of examples), so
chunks can later be sharded across devices. FusedMLP counts are static metadata and
scale the forward, so the fused model's kernel uses its own compressed params.
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ..models import DenseMLP, FusedMLP, check_batch, forward
from ..models.mlp import activation_fn
from .outputs import class_prob
from .selectors import Selector, SelectorError, all_mlps, leaf_paths, restrict

KINDS = ("ntk", "sign", "sign_sym")
STRATEGIES = ("auto", "full", "blocks", "tokens")
_BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "target_mask")
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
    for k in getattr(output, "needs", lambda: ())():
        if k not in out:
            raise NTKConfigError(f"output {output} needs batch[{k!r}]")
    return out


def _cast(tree, dtype):
    if dtype is None:
        return tree
    return jax.tree_util.tree_map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _dtype(compute_dtype):
    if compute_dtype is None:
        return None
    names = {"float32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16}
    if isinstance(compute_dtype, str):
        if compute_dtype not in names:
            raise NTKConfigError(f"compute_dtype {compute_dtype!r}; expected one of {sorted(names)}")
        return names[compute_dtype]
    return jnp.dtype(compute_dtype).type


def default_memory_budget() -> int:
    """80% of the first device's memory when the backend reports it, else 4 GiB."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(0.8 * stats["bytes_limit"])
    return _CPU_BUDGET


def _chunked_map(fn, batch, n, chunk):
    """fn(batch_chunk) -> pytree with leading axis c, mapped over chunks with lax.map; result axis n.

    The last chunk is padded with copies of example 0 (discarded afterwards)."""
    if chunk >= n:
        return fn(batch)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n

    def reshape(a):
        if pad:
            a = jnp.concatenate([a, jnp.broadcast_to(a[:1], (pad,) + a.shape[1:])])
        return a.reshape((n_chunks, chunk) + a.shape[1:])

    out = jax.lax.map(fn, jax.tree_util.tree_map(reshape, batch))
    return jax.tree_util.tree_map(lambda a: a.reshape((n_chunks * chunk,) + a.shape[2:])[:n], out)


# --------------------------------------------------------------------------- explicit gradients


def _grads_tree(cfg, output, sel, rest, batch, chunk):
    def f(s, ex):
        return output(cfg, Selector.merge(s, rest), ex)

    g1 = jax.vmap(jax.grad(f), in_axes=(None, 0))
    n = batch["input_ids"].shape[0]
    return _chunked_map(lambda b: g1(sel, b), batch, n, chunk)


@partial(jax.jit, static_argnames=("cfg", "output", "chunk", "dtype"))
def _grads_jit(sel, rest, batch, *, cfg, output, chunk, dtype):
    return _grads_tree(cfg, output, _cast(sel, dtype), _cast(rest, dtype), batch, chunk)


def _flat(tree, n):
    return [leaf.reshape(n, -1) for leaf in jax.tree_util.tree_leaves(tree)]


def _gram_add(acc, a_list, b_list, kinds):
    """acc[kind] += Σ_leaves A_l op(B_l)ᵀ in float32."""
    def dot(x, y):
        return jnp.dot(x, y.T, preferred_element_type=jnp.float32)

    for a, b in zip(a_list, b_list):
        if "ntk" in kinds:
            acc["ntk"] = acc["ntk"] + dot(a, b)
        if "sign" in kinds or "sign_sym" in kinds:
            sb = jnp.sign(b)
            if "sign" in kinds:
                acc["sign"] = acc["sign"] + dot(a, sb)
            if "sign_sym" in kinds:
                acc["sign_sym"] = acc["sign_sym"] + dot(jnp.sign(a), sb)
    return acc


@partial(jax.jit, static_argnames=("cfg", "output", "kinds", "chunk", "dtype"))
def _kernels_explicit(sel, rest, batch, batch2, *, cfg, output, kinds, chunk, dtype):
    sel, rest = _cast(sel, dtype), _cast(rest, dtype)
    n1 = batch["input_ids"].shape[0]
    a = _flat(_grads_tree(cfg, output, sel, rest, batch, chunk), n1)
    if batch2 is None:
        b, n2 = a, n1
    else:
        n2 = batch2["input_ids"].shape[0]
        b = _flat(_grads_tree(cfg, output, sel, rest, batch2, chunk), n2)
    acc = {k: jnp.zeros((n1, n2), jnp.float32) for k in kinds}
    return _gram_add(acc, a, b, kinds)


# --------------------------------------------------------------------------- Jacobian-free (tokens)


@dataclasses.dataclass(frozen=True)
class _ProbedMLP(DenseMLP):
    """A Dense/Fused block with zero probes added to its pre-activation (p1) and output (p2):
    ∂f/∂p are the per-token cotangents δ. `counts` = the fused scaling (None for dense)."""
    p1: jax.Array = None
    p2: jax.Array = None
    counts: Optional[tuple] = None

    def __call__(self, x, act):
        z = x @ self.w1.T.astype(x.dtype) + self.p1.astype(x.dtype)
        if self.b1 is not None:
            z = z + self.b1.astype(x.dtype)
        h = act(z)
        if self.counts is not None:
            h = h * jnp.asarray(self.counts, x.dtype)
        y = h @ self.w2.T.astype(x.dtype) + self.p2.astype(x.dtype)
        return y if self.b2 is None else y + self.b2.astype(x.dtype)


jax.tree_util.register_dataclass(_ProbedMLP, data_fields=["w1", "b1", "w2", "b2", "p1", "p2"],
                                 meta_fields=["counts"])


def _mlp_post(block, x, activation):
    """(u2 = the input of W2) for a Dense/Fused block, per token."""
    z = x @ block.w1.T.astype(x.dtype)
    if block.b1 is not None:
        z = z + block.b1.astype(x.dtype)
    h = activation_fn(activation)(z)
    if isinstance(block, FusedMLP):
        h = h * block.scale(x.dtype)
    return h


def _token_factors(cfg, output, params, batch, layers):
    """Per layer: (δ1 (N,T,D), u1 (N,T,d), δ2 (N,T,d), u2 (N,T,D))."""
    n, t = batch["input_ids"].shape

    def inject(probes):
        blocks = {}
        for l in layers:
            m = params["layers"][l]["mlp"]
            counts = m.counts if isinstance(m, FusedMLP) else None
            blocks[l] = _ProbedMLP(m.w1, m.b1, m.w2, m.b2, probes[l][0], probes[l][1], counts)
        lays = [dict(lp, mlp=blocks[i]) if i in blocks else lp for i, lp in enumerate(params["layers"])]
        return {**params, "layers": lays}

    def total(probes):
        one = lambda pr, ex: output(cfg, inject(pr), ex)  # noqa: E731
        return jnp.sum(jax.vmap(one)(probes, batch))

    dt = params["layers"][layers[0]]["mlp"].w1.dtype
    probes = {l: (jnp.zeros((n, t, params["layers"][l]["mlp"].width), dt), jnp.zeros((n, t, cfg.hidden), dt))
              for l in layers}
    deltas = jax.grad(total)(probes)
    fwd_batch = {k: v for k, v in batch.items() if k != "target_mask"}
    xs = forward(cfg, params, fwd_batch, collect=True).mlp_inputs
    out = {}
    for l in layers:
        m = params["layers"][l]["mlp"]
        x = xs[l]
        out[l] = (deltas[l][0], x, deltas[l][1], _mlp_post(m, x, cfg.activation))
    return out


def _pair_gram(da, ua, db, ub, rows):
    """Σ_{t,s} (δa_it·δb_js)(ua_it·ub_js), over row chunks of `rows` examples of a."""
    def f(c):
        d_c, u_c = c
        s1 = jnp.einsum("itk,jsk->ijts", d_c, db, preferred_element_type=jnp.float32)
        s2 = jnp.einsum("itk,jsk->ijts", u_c, ub, preferred_element_type=jnp.float32)
        return jnp.sum(s1 * s2, axis=(2, 3))

    n = da.shape[0]
    return _chunked_map(f, (da, ua), n, rows) if rows < n else f((da, ua))


@partial(jax.jit, static_argnames=("cfg", "output", "spec", "rows", "dtype"))
def _kernels_tokens(params, batch, batch2, *, cfg, output, spec, rows, dtype):
    params = _cast(params, dtype)
    layers = tuple(l for l, _ in spec)
    fa = _token_factors(cfg, output, params, batch, layers)
    fb = fa if batch2 is None else _token_factors(cfg, output, params, batch2, layers)
    n1 = batch["input_ids"].shape[0]
    n2 = n1 if batch2 is None else batch2["input_ids"].shape[0]
    k = jnp.zeros((n1, n2), jnp.float32)
    for l, names in spec:
        d1a, u1a, d2a, u2a = fa[l]
        d1b, u1b, d2b, u2b = fb[l]
        if "w1" in names:
            k = k + _pair_gram(d1a, u1a, d1b, u1b, rows)
        if "b1" in names:
            k = k + jnp.dot(d1a.sum(1), d1b.sum(1).T, preferred_element_type=jnp.float32)
        if "w2" in names:
            k = k + _pair_gram(d2a, u2a, d2b, u2b, rows)
        if "b2" in names:
            k = k + jnp.dot(d2a.sum(1), d2b.sum(1).T, preferred_element_type=jnp.float32)
    return {"ntk": k}


def _tokens_spec(params, paths):
    """((layer, names), ...) when every selected leaf is w1/b1/w2/b2 of a Dense/Fused MLP, else None."""
    spec: dict = {}
    for p in paths:
        if not (len(p) == 4 and p[0] == "layers" and p[2] == "mlp" and p[3] in ("w1", "b1", "w2", "b2")):
            return None
        if type(params["layers"][p[1]]["mlp"]) not in (DenseMLP, FusedMLP):
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


def _act_bytes(cfg, t, itemsize):
    """Rough activation memory of one example's forward + backward (all layers kept)."""
    per_tok_layer = 12 * cfg.hidden + 4 * cfg.intermediate + 3 * cfg.num_heads * t
    b = t * cfg.num_layers * per_tok_layer * itemsize
    if cfg.head == "lm":
        b += 3 * t * cfg.vocab_size * 4
    return int(b)


def plan_kernels(cfg, params, batch, *, selector=None, kinds=("ntk", "sign"), batch2=None, chunk=None,
                 param_block=None, compute_dtype=None, strategy="auto", memory_budget_bytes=None) -> Plan:
    """Choose a strategy by cost: the Jacobian-free path when only "ntk" is asked and it is
    cheaper in FLOPs; otherwise "full" when G fits the budget, else parameter blocks."""
    selector = all_mlps() if selector is None else selector
    if strategy not in STRATEGIES:
        raise NTKConfigError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise NTKConfigError(f"unknown kernel kinds {bad or kinds}; valid: {', '.join(KINDS)}")
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
    flat = dict(zip(leaf_paths(params), jax.tree_util.tree_leaves(params)))
    paths = [p for p in flat if selector(p)]
    sizes = {p: int(np.prod(flat[p].shape)) for p in paths}
    n_params = sum(sizes.values())
    g_bytes = nn * n_params * itemsize
    act = _act_bytes(cfg, max(t1, t2), itemsize)
    if chunk is None:
        chunk = int(max(1, min(max(n1, n2), (budget // 4) // max(act, 1))))

    # FLOPs of the Gram part (both strategies share the backward pass).
    n_kinds = len(kinds)
    explicit = 2 * n1 * n2 * n_params * n_kinds + 2 * (n1 * t1 + (n2 * t2 if batch2 is not None else 0)) * n_params
    spec = _tokens_spec(params, paths)
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
    if strategy == "auto":
        if spec is not None and kinds == ("ntk",) and flops["tokens"] < flops["full"]:
            strategy = "tokens"
        elif param_block is not None:
            strategy = "blocks"
        else:
            biggest = max(sizes.values())
            need = g_bytes + max(n1, n2) * biggest * itemsize + chunk * act
            strategy = "full" if need <= budget else "blocks"
    rows = 0
    if strategy == "tokens":
        per_row = n2 * t1 * t2 * 4 * 3
        rows = int(max(1, min(n1, (budget // 4) // max(per_row, 1))))
        blocks = (tuple(paths),)
    elif strategy == "full":
        blocks = (tuple(paths),)
    else:
        if param_block is None:
            param_block = max(1, int((budget // 2 - chunk * act) // max(nn * itemsize * 2, 1)))
        blocks, cur, cur_n = [], [], 0
        for p in paths:
            if cur and cur_n + sizes[p] > param_block:
                blocks.append(tuple(cur))
                cur, cur_n = [], 0
            cur.append(p)
            cur_n += sizes[p]
        blocks.append(tuple(cur))
        blocks = tuple(blocks)
    return Plan(strategy, int(chunk), blocks, n_params, g_bytes, act, budget, flops, rows)


# --------------------------------------------------------------------------- public API


def kernels(cfg, params, batch, *, output=None, selector=None, kinds=("ntk", "sign"), batch2=None,
            chunk=None, param_block=None, compute_dtype=None, strategy="auto",
            memory_budget_bytes=None, return_plan=False):
    """Empirical NTKs {kind: (N1, N2) float32} of scalar `output` w.r.t. the `selector`'s params.

    output: default `class_prob(0)`; selector: default `all_mlps()`; kinds ⊆ KINDS;
    batch2: cross-kernel against a second set; chunk: examples per vmapped chunk;
    param_block: max parameters per block (forces "blocks" under "auto");
    compute_dtype: e.g. "bfloat16" (accumulation stays float32); strategy: one of
    STRATEGIES; memory_budget_bytes: default 80% of device memory (4 GiB on CPU).
    """
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
                        memory_budget_bytes=memory_budget_bytes)
    kinds = tuple(kinds)
    dtype = _dtype(compute_dtype)
    if plan.strategy == "tokens":
        spec = _tokens_spec(params, list(plan.blocks[0]))
        out = _kernels_tokens(params, b1, b2, cfg=cfg, output=output, spec=spec, rows=plan.rows, dtype=dtype)
    else:
        out = None
        for block in plan.blocks:
            sel = selector if plan.strategy == "full" else restrict(selector, block)
            s, r = sel.split(params)
            part = _kernels_explicit(s, r, b1, b2, cfg=cfg, output=output, kinds=kinds, chunk=plan.chunk,
                                     dtype=dtype)
            out = part if out is None else {k: out[k] + part[k] for k in kinds}
    return (out, plan) if return_plan else out


def per_example_grads(cfg, params, batch, *, output=None, selector=None, chunk=None, compute_dtype=None):
    """Per-example gradients: the selected sub-pytree (None elsewhere) with leaves (N, *shape)."""
    output = class_prob(0) if output is None else output
    selector = all_mlps() if selector is None else selector
    if hasattr(output, "check"):
        output.check(cfg)
    selector.validate(params)
    b = _prepare(cfg, batch, output)
    n = b["input_ids"].shape[0]
    s, r = selector.split(params)
    return _grads_jit(s, r, b, cfg=cfg, output=output, chunk=int(chunk or n), dtype=_dtype(compute_dtype))


def flatten_grads(grads) -> jax.Array:
    """(N, P) matrix from `per_example_grads` output, leaves in flatten order."""
    leaves = jax.tree_util.tree_leaves(grads)
    n = leaves[0].shape[0]
    return jnp.concatenate([l.reshape(n, -1) for l in leaves], axis=1)


__all__ = ["KINDS", "STRATEGIES", "NTKConfigError", "Plan", "plan_kernels", "kernels", "per_example_grads",
           "flatten_grads", "default_memory_budget"]
