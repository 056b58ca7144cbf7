"""The block protocol: what every MLP kind provides, so that no other module tests types.

A block is a frozen dataclass registered as a JAX pytree (`block_kind`). Every array
is a pytree leaf; field metadata says which leaves do not train:

- `FIXED` (`metadata={"fixed": True}`): a float32 array that is part of the function but
  never trained (fusion's cluster sizes n). A leaf, not treedef metadata, so blocks whose
  fixed values differ share one compiled program; `ntkfuse.frozen.frozen_mask` names these
  leaves for every consumer (gradients, optimizers, NTK selectors, accounting, casts).
- `ROUTER` (`metadata={"router": True}`): an MoE router, frozen unless asked (`train_router`).
- `STATIC` (`metadata={"static": True}`): a hashable Python value in the treedef (an MoE's
  top_k), for what must be known at trace time.

Kinds that are a bundle of sub-MLPs (METHOD.md §1) expose a `NeuronView`
y = W2 (s ⊙ σ(W1 x + b1)) + b2 with an optional fixed per-neuron scale s, and share ONE
forward, `neuron_forward`, which also takes the zero probes and taps of the NTK engine's
Jacobian-free path. Everything else a caller needs is a method or class attribute:
width, param_count, flops_per_token, neuron_view, the token-gradient map of the
`tokens`/`layers` NTK strategies, and how to stack blocks of one kind across layers.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def activation_fn(name: str) -> Callable[[Array], Array]:
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name == "gelu_tanh":
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "relu":
        return jax.nn.relu
    if name == "silu":
        return jax.nn.silu
    if name == "identity":
        return lambda x: x
    raise ValueError(f"unknown activation {name!r}; known: gelu, gelu_tanh, relu, silu, identity")


FIXED = {"fixed": True}
ROUTER = {"router": True}
STATIC = {"static": True}
# Fixed arrays are float32: cluster sizes are integers ≤ D, exact in float32 up to 2²⁴ (bfloat16 is
# exact only up to 256), and a float leaf passes through jax.grad, optax and orbax like any other.
FIXED_DTYPE = jnp.float32


def fixed_fields(block_or_cls) -> tuple:
    """Names of a kind's fixed fields: float32 array leaves that are never trained."""
    return tuple(f.name for f in dataclasses.fields(block_or_cls) if f.metadata.get("fixed"))


def static_fields(block_or_cls) -> tuple:
    """Names of a kind's static fields: hashable values kept in the pytree's treedef."""
    return tuple(f.name for f in dataclasses.fields(block_or_cls) if f.metadata.get("static"))


def as_fixed(values) -> Array:
    """A fixed field's value as a float32 array (`FIXED_DTYPE`)."""
    return jnp.asarray(np.asarray(values), FIXED_DTYPE)


def block_kind(cls):
    """Class decorator: a frozen dataclass and a pytree whose static fields are treedef metadata
    (every other field, fixed ones included, is a child)."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    static = static_fields(cls)
    data = [f.name for f in dataclasses.fields(cls) if f.name not in static]
    jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=list(static))
    return cls


def lin(x: Array, w: Array, b: Optional[Array]) -> Array:
    """x Wᵀ + b in x's dtype (weights stored (out, in))."""
    y = x @ w.T.astype(x.dtype)
    return y if b is None else y + b.astype(x.dtype)


def _n(a) -> int:
    return 0 if a is None else int(a.size)


class NeuronView(NamedTuple):
    """A block as D sub-MLPs: y = W2 (scale ⊙ σ(W1 x + b1)) + b2; scale None means ones."""
    w1: Array                  # (D, d_in)
    b1: Optional[Array]        # (D,)
    w2: Array                  # (d_out, D)
    b2: Optional[Array]        # (d_out,)
    scale: Optional[Array]     # (D,) fixed per-neuron scaling (fusion's n), or None


class Probes(NamedTuple):
    """Zero probes and taps of the NTK `tokens` path (any may be None): `d1` is added to the
    pre-activation and `d2` to the output (their gradients are the per-token cotangents δ1,
    δ2); `u1` taps the input and `u2` the input of W2 (their "gradients" are the activations)."""
    d1: Optional[Array] = None
    u1: Optional[Array] = None
    d2: Optional[Array] = None
    u2: Optional[Array] = None


@jax.custom_vjp
def tap(x, s):
    """Identity in x whose cotangent for the zero tap s is x itself: a gradient w.r.t. s
    returns the activation x from the same forward/backward pass (no second forward)."""
    return x


def _tap_fwd(x, s):
    return x, (x, s.shape)


def _tap_bwd(res, ct):
    x, shape = res
    lead = tuple(range(x.ndim - len(shape)))       # the per-example forward adds a batch axis of 1
    return ct, jnp.sum(x, axis=lead).reshape(shape)


tap.defvjp(_tap_fwd, _tap_bwd)


def neuron_forward(view: NeuronView, x: Array, act: Callable, probes: Optional[Probes] = None) -> Array:
    """THE forward of every sub-MLP bundle (dense, fused, its probed form, stacked fitting)."""
    if probes is not None and probes.u1 is not None:
        x = tap(x, probes.u1)
    z = x @ view.w1.T.astype(x.dtype)
    if probes is not None and probes.d1 is not None:
        z = z + probes.d1.astype(x.dtype)
    if view.b1 is not None:
        z = z + view.b1.astype(x.dtype)
    h = act(z)
    if view.scale is not None:
        h = h * view.scale.astype(x.dtype)
    if probes is not None and probes.u2 is not None:
        h = tap(h, probes.u2)
    y = h @ view.w2.T.astype(x.dtype)
    if probes is not None and probes.d2 is not None:
        y = y + probes.d2.astype(x.dtype)
    return y if view.b2 is None else y + view.b2.astype(x.dtype)


# Which per-token factors give each leaf's per-example gradient in a sub-MLP bundle:
# y = W u + b with cotangent δ gives g_W = Σ_t δ_t u_tᵀ and g_b = Σ_t δ_t.
NEURON_TOKEN_GRADS = {"w1": ("d1", "u1"), "b1": ("d1", None), "w2": ("d2", "u2"), "b2": ("d2", None)}


class Block:
    """Base of every MLP kind. Subclasses are `@block_kind` dataclasses."""

    kind: ClassVar[str] = "block"
    # Whether the one-shot methods (METHOD.md §2) can compress this kind: the original blocks.
    compressible: ClassVar[bool] = False
    # {leaf name: (δ factor, u factor or None)} when the NTK's Jacobian-free strategies apply.
    token_grads: ClassVar[Optional[Mapping]] = None
    # One-shot methods a compressible kind cannot apply (a CompressionError names the rest).
    unsupported_methods: ClassVar[tuple] = ()

    @property
    def width(self) -> int:
        raise NotImplementedError

    def __call__(self, x: Array, act: Callable) -> Array:
        raise NotImplementedError

    def neuron_view(self) -> Optional[NeuronView]:
        """The block as sub-MLPs, or None for kinds that are not (low-rank, linear)."""
        return None

    def param_count(self) -> int:
        """Parameters: every leaf but the fixed fields (a router counts: it is a weight)."""
        from ...frozen import split_frozen   # frozen.py imports the block kinds
        return int(sum(x.size for x in jax.tree_util.tree_leaves(split_frozen(self, train_router=True)[0])))

    def flops_per_token(self) -> int:
        """FLOPs for one token (multiply-add = 2, plus one per bias add, activation, scaling)."""
        raise NotImplementedError

    # ---- containers (MoEMLP): blocks made of other blocks, compressed one sub-block at a time

    def sub_blocks(self) -> Optional[tuple]:
        """The blocks this block is made of (an MoE's experts), or None for a plain block."""
        return None

    def with_sub_blocks(self, blocks):
        """The same container with its `sub_blocks` replaced (same number, any kinds)."""
        raise TypeError(f"{type(self).__name__} has no sub-blocks")

    # ---- the NTK engine's Jacobian-free path (kinds with `token_grads`)

    def factor_widths(self) -> dict:
        """Feature width of each per-token factor named in `token_grads`."""
        v = self.neuron_view()
        return {"d1": v.w1.shape[0], "u1": v.w1.shape[1], "d2": v.w2.shape[0], "u2": v.w1.shape[0]}

    def apply_probed(self, x: Array, act: Callable, probes: Probes) -> Array:
        v = self.neuron_view()
        if v is None or self.token_grads is None:
            raise TypeError(f"{type(self).__name__} has no probed forward")
        return neuron_forward(v, x, act, probes)

    # ---- stacking blocks of one kind across layers (vmapped fitting)

    def split_fixed(self) -> tuple:
        """(holder, fixed): this block with its fixed fields set to None (only arrays that
        train), and {fixed field: array}, so that a fit differentiates the holder alone."""
        names = fixed_fields(self)
        if not names:
            return self, {}
        return (dataclasses.replace(self, **{n: None for n in names}),
                {n: getattr(self, n) for n in names})

    @classmethod
    def apply_split(cls, holder, fixed: dict, x: Array, act: Callable) -> Array:
        """Forward of a `split_fixed` pair (with `fixed` possibly traced/stacked)."""
        return cls.join_fixed(holder, fixed)(x, act)

    @classmethod
    def join_fixed(cls, holder, fixed: dict):
        """Inverse of `split_fixed`: the holder with its fixed fields put back."""
        return dataclasses.replace(holder, **fixed) if fixed else holder


__all__ = ["Block", "block_kind", "fixed_fields", "static_fields", "as_fixed", "FIXED", "ROUTER", "STATIC",
           "FIXED_DTYPE", "activation_fn", "lin", "NeuronView", "Probes", "tap",
           "neuron_forward", "NEURON_TOKEN_GRADS"]
