"""Leaves that do not train: an MoE block's router (issue 13: expert compression, layer-wise
tuning, surrogate fitting and fine-tuning leave the original routing in place), and the one
AdamW every trainer builds around them.

`frozen_adamw` zeroes the frozen leaves' gradients first (so a global-norm clip sees only
trainable gradients, as torch with requires_grad=False) and keeps them out of weight decay:
their moments stay 0 and their update is exactly 0.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import optax

FROZEN_LEAVES = ("router",)


def leaf_name(path) -> str:
    """The last key of a pytree path (dict key, dataclass field or sequence index) as a string."""
    k = path[-1]
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def frozen_mask(params, train_router: bool = False):
    """Pytree of bools like `params`: True on MoE router leaves (none when `train_router`)."""
    frozen = () if train_router else FROZEN_LEAVES
    return jax.tree_util.tree_map_with_path(lambda p, _: leaf_name(p) in frozen, params)


def frozen_adamw(lr, *, decay_mask: Optional[Callable] = None, clip: Optional[float] = None,
                 train_router: bool = False, **adamw) -> optax.GradientTransformation:
    """Zero the frozen leaves' gradients, then optional global-norm clipping, then AdamW whose
    decay mask (`decay_mask`, default every leaf) leaves out the frozen leaves."""
    def decay(params):
        keep = (jax.tree_util.tree_map(lambda _: True, params) if decay_mask is None else decay_mask(params))
        return jax.tree_util.tree_map(lambda d, f: d and not f, keep, frozen_mask(params, train_router))

    steps = [optax.masked(optax.set_to_zero(), lambda p: frozen_mask(p, train_router))]
    if clip:
        steps.append(optax.clip_by_global_norm(clip))
    steps.append(optax.adamw(lr, mask=decay, **adamw))
    return optax.chain(*steps)


__all__ = ["FROZEN_LEAVES", "leaf_name", "frozen_mask", "frozen_adamw"]
