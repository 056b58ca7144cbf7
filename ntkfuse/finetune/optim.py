"""The paper's optimiser (METHOD.md §5) as optax: AdamW β=(0.9, 0.98), ε=1e-6, weight
decay 0.1 on everything but biases and LayerNorm params (as HF's Trainer), a linear
decay after a warm-up (HF `get_linear_schedule_with_warmup`), optional global-norm
clipping (1.0 for GPT-2).

optax.adamw and torch.optim.AdamW are the same update: p ← p − lr·(m̂/(√v̂ + ε) + λ·p)
with bias-corrected moments (ε outside the square root in both), so a torch loop with
the same schedule gives the same parameters (tests/finetune/test_parity.py).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from ..frozen import frozen_adamw, frozen_mask, leaf_name

# Leaf names that are biases in ntkfuse's params (layers' "b", MLP blocks' "b1"/"b2",
# LayerNorm's "bias"); "scale" is only ever a LayerNorm weight.
NO_DECAY_LEAVES = ("b", "b1", "b2", "bias", "scale")


def decay_mask(params):
    """True on leaves that get weight decay: every matrix and embedding; False on biases
    and LayerNorm params (derived from leaf paths, so any MLP block kind is covered) and on
    fixed block fields (fusion's counts, which AdamW never sees anyway)."""
    fixed = frozen_mask(params, train_router=True)
    return jax.tree_util.tree_map_with_path(lambda p, _, f: not f and leaf_name(p) not in NO_DECAY_LEAVES,
                                            params, fixed)


def warmup_steps(total_steps: int, warmup: float) -> int:
    """ceil(warmup · total), as HF's Trainer derives it from warmup_ratio."""
    return int(math.ceil(warmup * total_steps))


def linear_schedule(lr: float, total_steps: int, warmup: int):
    """HF `get_linear_schedule_with_warmup`: lr·c/warmup for c < warmup, then
    lr·max(0, (total − c)/(total − warmup)); step c is the 0-based update count."""
    def schedule(count):
        c = jnp.asarray(count, jnp.float32)
        up = c / max(1, warmup)
        down = jnp.maximum(0.0, (total_steps - c) / max(1, total_steps - warmup))
        return lr * jnp.where(c < warmup, up, down)
    return schedule


def optimizer(tc, total_steps: int) -> optax.GradientTransformation:
    """AdamW of a `TrainConfig` over `total_steps` updates (clipping first when tc.clip), over
    the trainable leaves only (`ntkfuse.frozen.frozen_adamw`)."""
    sched = linear_schedule(tc.lr, total_steps, warmup_steps(total_steps, tc.warmup))
    return frozen_adamw(sched, b1=tc.b1, b2=tc.b2, eps=tc.eps, weight_decay=tc.weight_decay, decay_mask=decay_mask,
                        clip=tc.clip, train_router=tc.train_router)


__all__ = ["decay_mask", "linear_schedule", "warmup_steps", "optimizer", "NO_DECAY_LEAVES"]
