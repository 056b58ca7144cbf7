"""Empirical NTK of ANY JAX function `f(params, x)` (not only ntkfuse transformers).

A drop-in for neural-tangents' `empirical_ntk_fn`, whose last release (0.6.5) does not
import on current JAX: the same arguments with the same meaning and the same output
layout (checked against neural-tangents 0.6.5 by scripts/crosscheck_neural_tangents.py):

    ntk_fn = empirical_ntk_fn(f, trace_axes=(-1,), diagonal_axes=(), vmap_axes=0, kind="ntk")
    K = ntk_fn(x1, x2, params)          # x2=None: the kernel of x1 with itself

For f: (params, x of shape (N, ...)) -> outputs (N, *O), the kernel is
Θ(x_i, x_j) = Σ_θ ∂f(x_i)/∂θ ⊗ op(∂f(x_j)/∂θ) over every leaf of `params`, with
op = identity ("ntk"), sign ("sign", the Adam/sign-GD kernel of METHOD.md §3, asymmetric)
or sign on both sides ("sign_sym"). Axes are numbered on f's output (N, *O), the
batch axis being 0 (negative axes count from the end). Axes in `trace_axes` are traced
and averaged (the trace divided by their size, as neural-tangents does); axes in
`diagonal_axes` keep only their diagonal; every other output axis appears twice. The
result is (N1, N2) followed, in output-axis order, by one axis per diagonal axis and
two (a, a′) per remaining axis.

`vmap_axes=0` declares f batch-independent along x's axis 0 (no batch statistics), so
per-example Jacobians are computed by `vmap` over single examples (in chunks of `chunk`
examples); `vmap_axes=None` differentiates the whole batch at once (f may mix examples).
Not offered: the batch axis as a traced or diagonal axis, other `vmap_axes` forms,
`implementation` (one Jacobian-contraction implementation) and `**apply_fn_kwargs`
(close over them). Added: `kind` (the sign kernels) and `chunk`.
"""
from __future__ import annotations

import math
import string
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from .kernels import KINDS, NTKConfigError, _chunked_map, _dot_t


def _norm_axes(axes, out_ndim, what):
    """Axes of f's output (N, *O) -> indices into the per-example axes O."""
    nd = out_ndim + 1
    out = []
    for a in axes:
        a = int(a)
        if not -nd <= a < nd:
            raise NTKConfigError(f"{what} axis {a} out of range for outputs with {nd} axes (batch axis 0); "
                                 "for outputs of shape (N,) pass trace_axes=()")
        a %= nd
        if a == 0:
            raise NTKConfigError(f"{what}: the batch axis 0 cannot be traced or diagonal here")
        out.append(a - 1)
    if len(set(out)) != len(out):
        raise NTKConfigError(f"{what} names an output axis twice: {tuple(axes)}")
    return out


def _contract(ja, jb, kind, trace, diag, n_out):
    """Σ over parameter entries of ja ⊗ op(jb), traced axes summed (the caller averages),
    diagonal axes kept once, other axes twice, in output-axis order. ja: (N1, *O, P)."""
    if kind in ("sign", "sign_sym"):
        jb = jnp.sign(jb)
        if kind == "sign_sym":
            ja = jnp.sign(ja)
    if n_out == 0:
        return _dot_t(ja, jb)
    letters = iter(string.ascii_letters)
    n1, n2, p = next(letters), next(letters), next(letters)
    oa = [next(letters) for _ in range(n_out)]
    ob = [oa[i] if (i in trace or i in diag) else next(letters) for i in range(n_out)]
    out = n1 + n2 + "".join("" if i in trace else (oa[i] if i in diag else oa[i] + ob[i]) for i in range(n_out))
    spec = f"{n1}{''.join(oa)}{p},{n2}{''.join(ob)}{p}->{out}"
    return jnp.einsum(spec, ja, jb, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def empirical_ntk_fn(f: Callable, trace_axes: Sequence[int] = (-1,), diagonal_axes: Sequence[int] = (),
                     vmap_axes: Optional[int] = 0, kind: str = "ntk", chunk: Optional[int] = None) -> Callable:
    """Returns `ntk_fn(x1, x2, params)`: the empirical kernel of `f(params, x)` (see the module doc).

    x1, x2: arrays (or pytrees of arrays) with the example axis first; `params`: any pytree.
    `chunk`: examples per vmapped Jacobian chunk (memory only; with vmap_axes=0).
    """
    if kind not in KINDS:
        raise NTKConfigError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")
    if vmap_axes not in (0, None):
        raise NTKConfigError(f"vmap_axes must be 0 (batch-independent f) or None, got {vmap_axes!r}")
    if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
        raise NTKConfigError(f"chunk must be a positive int, got {chunk!r}")
    overlap = set(int(a) for a in trace_axes) & set(int(a) for a in diagonal_axes)
    if overlap:
        raise NTKConfigError(f"axes {sorted(overlap)} are both traced and diagonal")

    def jacobians(params, x):
        """Leaves (N, *O, P_leaf)."""
        n = jax.tree_util.tree_leaves(x)[0].shape[0]
        if vmap_axes is None:
            jac = jax.jacrev(f)(params, x)
        else:
            one = lambda p, xi: f(p, jax.tree_util.tree_map(lambda a: a[None], xi))[0]   # noqa: E731
            per = jax.vmap(jax.jacrev(one), in_axes=(None, 0))
            jac = _chunked_map(lambda xs: per(params, xs), x, n, chunk or n, keep_padding=True)
        out = jax.eval_shape(f, params, x)
        if not hasattr(out, "ndim") or out.ndim < 1:
            raise NTKConfigError("f must return one array with the example axis first, (N, *O)")
        out_ndim = out.ndim - 1
        leaves = jax.tree_util.tree_leaves(jac)
        return [l.reshape(l.shape[:1 + out_ndim] + (-1,)) for l in leaves], out_ndim

    @jax.jit
    def ntk_fn(x1, x2, params):
        # jacobians keep their padded rows (see kernels._chunked_map); the kernel drops them
        n1 = jax.tree_util.tree_leaves(x1)[0].shape[0]
        n2 = n1 if x2 is None else jax.tree_util.tree_leaves(x2)[0].shape[0]
        ja, n_out = jacobians(params, x1)
        jb = ja if x2 is None else jacobians(params, x2)[0]
        trace = _norm_axes(trace_axes, n_out, "trace_axes")
        diag = _norm_axes(diagonal_axes, n_out, "diagonal_axes")
        k = None
        for a, b in zip(ja, jb):
            part = _contract(a.astype(jnp.float32), b.astype(jnp.float32), kind, trace, diag, n_out)
            k = part if k is None else k + part
        traced = math.prod(ja[0].shape[1 + i] for i in trace)
        k = k[:n1, :n2]
        return k / traced if traced > 1 else k

    return ntk_fn


__all__ = ["empirical_ntk_fn"]
