"""Sparse Mixture-of-Experts MLP (Mixtral, docs/moe.md): a bias-free router and E expert blocks.

    logits = x W_rᵀ                      (E,) per token, in x's dtype (HF: F.linear)
    p      = softmax(float32(logits))    over the experts, in float32
    top-k of p, renormalised to sum 1    (Mixtral always renormalises)
    y      = Σ_{e in top-k} w_e · expert_e(x)

Each expert is any block kind (GatedMLP in a loaded Mixtral; FusedGatedMLP or a narrower
GatedMLP once compressed), replaced independently of the others; the router is left alone.

The computation is *dense*: every expert runs on every token and the routing weights are
zero off the top-k, so the function is the sparse one (an expert with weight 0 adds an exact
0) while staying jit/vmap/grad friendly with static shapes. It costs E/top_k times the
expert FLOPs of a sparse dispatch; `flops_per_token` reports the sparse (top_k) cost, the
model's, not this implementation's (`dense_flops_per_token`).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from .base import ROUTER, STATIC, Block, block_kind

Array = jax.Array


def route(router: Array, x: Array, top_k: int) -> tuple:
    """(weights (..., E) float32, zero off the top-k and summing to 1 over it; top-k indices
    (..., top_k)), in HF Mixtral's order: logits in x's dtype, softmax in float32, top-k,
    renormalise."""
    logits = x @ router.T.astype(x.dtype)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    vals, idx = jax.lax.top_k(probs, top_k)
    vals = vals / jnp.sum(vals, axis=-1, keepdims=True)
    E = router.shape[0]
    weights = jnp.sum(jax.nn.one_hot(idx, E, dtype=jnp.float32) * vals[..., None], axis=-2)
    return weights, idx


@block_kind
class MoEMLP(Block):
    router: Array = dataclasses.field(metadata=ROUTER)   # (E, d), bias-free; frozen unless train_router
    experts: tuple = dataclasses.field()                 # E blocks, each mapping d -> d
    top_k: int = dataclasses.field(metadata=STATIC)      # experts per token: in the treedef

    kind = "moe"
    # The one-shot methods apply expert by expert (`sub_blocks`), never to the block as a whole.
    compressible = False

    def __post_init__(self):
        if isinstance(self.experts, list):
            object.__setattr__(self, "experts", tuple(self.experts))
        if not isinstance(self.experts, tuple):   # a pytree prefix or sentinel rebuilt by JAX: no checks
            return
        E = len(self.experts)
        if hasattr(self.router, "shape") and len(self.router.shape) == 2 and self.router.shape[0] != E:
            raise ValueError(f"router has {self.router.shape[0]} rows for {E} experts")
        if isinstance(self.top_k, int) and not 1 <= self.top_k <= E:
            raise ValueError(f"top_k must be in [1, {E}], got {self.top_k}")

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def width(self) -> int:
        """The largest expert width (every expert's width when they are equal: `expert_widths`)."""
        return max(self.expert_widths)

    @property
    def expert_widths(self) -> tuple:
        return tuple(int(e.width) for e in self.experts)

    def __call__(self, x: Array, act: Callable) -> Array:
        w, _ = route(self.router, x, self.top_k)
        # As HF: each expert's output times its float32 weight, cast to x's dtype, accumulated
        # in x's dtype in expert order (weights 0 off the top-k add exact zeros).
        y = jnp.zeros_like(x)
        for e, block in enumerate(self.experts):
            y = y + (block(x, act).astype(jnp.float32) * w[..., e:e + 1]).astype(x.dtype)
        return y

    def routing(self, x: Array) -> tuple:
        """(weights (..., E), top-k indices (..., top_k)) of tokens x: which experts run, how much."""
        return route(self.router, x, self.top_k)

    # ---- accounting

    def param_count(self) -> int:
        """Router plus every expert's parameters (fixed fields are not parameters)."""
        return int(self.router.size) + sum(self.expert_param_counts())

    def expert_param_counts(self) -> tuple:
        return tuple(int(e.param_count()) for e in self.experts)

    def expert_flops_per_token(self) -> tuple:
        return tuple(int(e.flops_per_token()) for e in self.experts)

    def router_flops_per_token(self) -> int:
        """Router matmul, softmax (one per expert) and the weighted sum of top_k outputs."""
        E, d = self.router.shape
        return 2 * E * d + E + 2 * self.top_k * d

    def flops_per_token(self) -> int:
        """Sparse cost: router + top_k experts, each at the mean expert cost (exact when the
        experts have equal widths; otherwise the expectation under uniform routing)."""
        f = self.expert_flops_per_token()
        return self.router_flops_per_token() + int(round(self.top_k * sum(f) / len(f)))

    def dense_flops_per_token(self) -> int:
        """What this dense implementation computes: every expert on every token."""
        return self.router_flops_per_token() + sum(self.expert_flops_per_token())

    # ---- container protocol: the compression methods map over the experts

    def sub_blocks(self) -> tuple:
        return self.experts

    def with_sub_blocks(self, blocks) -> "MoEMLP":
        blocks = tuple(blocks)
        if len(blocks) != self.num_experts:
            raise ValueError(f"{len(blocks)} experts given for a block of {self.num_experts}")
        return MoEMLP(self.router, blocks, self.top_k)


__all__ = ["MoEMLP", "route"]
