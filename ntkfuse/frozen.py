"""Leaves that do not train, decided in ONE place (`frozen_mask`) for every consumer.

Two kinds, both declared by block field metadata (`models.blocks.base`):
- fixed block fields (`FIXED`: fusion's cluster sizes n): part of the function, never trained,
  never a parameter; always frozen;
- MoE routers (`ROUTER`, issue 13: expert compression, layer-wise tuning, surrogate fitting
  and fine-tuning leave the original routing in place) unless `train_router`.

Consumers: the trainers differentiate only the trainable partition (`split_frozen` before
`jax.grad`, `merge_frozen` after), `frozen_adamw` holds optimizer state for the trainable
leaves only, the NTK selectors never pick a fixed leaf, parameter accounting skips fixed
leaves, and `cast_floating` keeps them float32 (exact sizes) when a model is cast.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from .models.blocks import is_mlp

_IS_NONE = lambda x: x is None  # noqa: E731


def leaf_name(path) -> str:
    """The last key of a pytree path (dict key, dataclass field or sequence index) as a string."""
    k = path[-1]
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _block_mask(block, train_router: bool):
    kw = {}
    for f in dataclasses.fields(block):
        v = getattr(block, f.name)
        if f.metadata.get("static"):
            kw[f.name] = v
        elif f.metadata.get("fixed") or (f.metadata.get("router") and not train_router):
            kw[f.name] = jax.tree_util.tree_map(lambda _: True, v)
        else:
            kw[f.name] = frozen_mask(v, train_router)
    return dataclasses.replace(block, **kw)


def frozen_mask(tree, train_router: bool = False):
    """Pytree of bools like `tree` (any tree holding MLP blocks: a model's params, a tuple of
    blocks, a gradient or one partition of them): True on the leaves that never train, i.e. the
    blocks' fixed fields and, unless `train_router`, MoE routers; False elsewhere."""
    return jax.tree_util.tree_map(lambda n: _block_mask(n, train_router) if is_mlp(n) else False, tree,
                                  is_leaf=is_mlp)


def split_frozen(tree, train_router: bool = False) -> tuple:
    """(trainable, frozen): two trees like `tree`, each with None where the other holds the leaf.
    Differentiate a function of `merge_frozen(trainable, frozen)` w.r.t. `trainable` alone."""
    mask = frozen_mask(tree, train_router)
    trainable = jax.tree_util.tree_map(lambda x, m: None if m else x, tree, mask)
    frozen = jax.tree_util.tree_map(lambda x, m: x if m else None, tree, mask)
    return trainable, frozen


def merge_frozen(trainable, frozen):
    """Inverse of `split_frozen`."""
    return jax.tree_util.tree_map(lambda a, b: b if a is None else a, trainable, frozen, is_leaf=_IS_NONE)


def cast_floating(tree, dtype):
    """Floating leaves cast to `dtype`, fixed fields kept: cluster sizes up to D are exact in
    float32 but not in bfloat16 (integers above 256 round), and the forward casts them to the
    activations' dtype where it multiplies, so a bf16 compute path gives the same numbers."""
    if dtype is None:
        return tree
    mask = frozen_mask(tree, train_router=True)
    return jax.tree_util.tree_map(
        lambda a, fixed: a if fixed or not jnp.issubdtype(a.dtype, jnp.floating) else a.astype(dtype), tree, mask)


def _on_trainable(inner: optax.GradientTransformation, train_router: bool) -> optax.GradientTransformation:
    """`inner` applied to the trainable partition only: its state has no entry (None) for a
    frozen leaf, and a frozen leaf's update is an exact zero. Accepts whole trees or trainable
    partitions (`split_frozen(...)[0]`); both give the same state."""
    def init(params):
        return inner.init(split_frozen(params, train_router)[0])

    def update(updates, state, params=None):
        tu, fu = split_frozen(updates, train_router)
        tp = None if params is None else split_frozen(params, train_router)[0]
        u, state = inner.update(tu, state, tp)
        return merge_frozen(u, jax.tree_util.tree_map(jnp.zeros_like, fu)), state

    return optax.GradientTransformation(init, update)


def frozen_adamw(lr, *, decay_mask: Optional[Callable] = None, clip: Optional[float] = None,
                 train_router: bool = False, **adamw) -> optax.GradientTransformation:
    """Optional global-norm clipping then AdamW (decay on `decay_mask`, default every leaf), both
    over the trainable leaves only: the clip sees only trainable gradients (as torch with
    requires_grad=False), and no moment or weight decay exists for a frozen leaf."""
    steps = [optax.clip_by_global_norm(clip)] if clip else []
    steps.append(optax.adamw(lr, mask=decay_mask, **adamw))
    return _on_trainable(optax.chain(*steps), train_router)


def trainable_grad(fn: Callable, train_router: bool = False, has_aux: bool = False) -> Callable:
    """`jax.value_and_grad(fn)` w.r.t. the trainable leaves of fn's first argument (a params tree):
    the frozen ones enter as constants, so no gradient is ever formed for them. Returns
    (value, grads) with grads the trainable partition (None on frozen leaves)."""
    def wrapped(params, *args):
        trainable, frozen = split_frozen(params, train_router)
        return jax.value_and_grad(lambda t: fn(merge_frozen(t, frozen), *args), has_aux=has_aux)(trainable)
    return wrapped


__all__ = ["leaf_name", "frozen_mask", "split_frozen", "merge_frozen", "cast_floating", "frozen_adamw",
           "trainable_grad"]
