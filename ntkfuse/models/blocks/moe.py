"""Sparse Mixture-of-Experts MLP (Mixtral, Switch; docs/moe.md): a bias-free router and E expert blocks.

Two routing rules (`rule`, a static field), each as its HF model computes it:

"topk" (Mixtral):
    logits = x W_rᵀ                      (E,) per token, in x's dtype (HF: F.linear)
    p      = softmax(float32(logits))    over the experts, in float32
    top-k of p, renormalised to sum 1    (Mixtral always renormalises)
    y      = Σ_{e in top-k} w_e · expert_e(x)

"switch" (Switch Transformers, top-1 with expert capacity):
    logits = float32(x) float32(W_r)ᵀ    the router runs in float32 whatever x's dtype
    p      = softmax(logits), cast to x's dtype
    e*     = argmax p (the first on ties), w = max p, NOT renormalised
    capacity: along the sequence axis (-2) of x, the first `capacity` tokens of each sequence
    routed to e* are kept; later ones are dropped: their output is exactly 0 (the layer's
    residual carries them), as HF's `SwitchTransformersTop1Router` (cumsum of the one-hot
    choice over the sequence, kept where ≤ expert_capacity). Padding tokens count too.
    y      = w · expert_{e*}(x)   (0 for a dropped token)

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
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from .base import ROUTER, STATIC, Block, block_kind

Array = jax.Array


ROUTINGS = ("topk", "switch")


def route(router: Array, x: Array, top_k: int, rule: str = "topk", capacity=None) -> tuple:
    """(weights (..., E) float32, zero off the chosen experts; chosen indices (..., top_k)).

    "topk": HF Mixtral's order: logits in x's dtype, softmax in float32, top-k, renormalise.
    "switch": `switch_route` (top-1, unnormalised, expert capacity over axis -2)."""
    if rule == "switch":
        return switch_route(router, x, capacity)
    logits = x @ router.T.astype(x.dtype)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    vals, idx = jax.lax.top_k(probs, top_k)
    vals = vals / jnp.sum(vals, axis=-1, keepdims=True)
    E = router.shape[0]
    weights = jnp.sum(jax.nn.one_hot(idx, E, dtype=jnp.float32) * vals[..., None], axis=-2)
    return weights, idx


def switch_route(router: Array, x: Array, capacity=None) -> tuple:
    """Switch Transformers' top-1 routing (module docstring): weights (..., E) float32 with the
    chosen expert's probability (rounded to x's dtype, as HF multiplies in it) or 0 where the token
    is over capacity; indices (..., 1) of the chosen expert (dropped tokens included). x must keep
    its sequence axis at -2: capacity counts tokens along it, per sequence."""
    logits = x.astype(jnp.float32) @ router.T.astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1).astype(x.dtype)
    idx = jnp.argmax(probs, axis=-1)
    onehot = jax.nn.one_hot(idx, router.shape[0], dtype=jnp.int32)
    if capacity is not None:
        if x.ndim < 2:
            raise ValueError("switch routing with an expert capacity needs a sequence axis (x of shape (..., T, d))")
        onehot = onehot * (jnp.cumsum(onehot, axis=-2) <= capacity)
    top = jnp.max(probs, axis=-1, keepdims=True).astype(jnp.float32)
    return onehot.astype(jnp.float32) * top, idx[..., None]


@block_kind
class MoEMLP(Block):
    router: Array = dataclasses.field(metadata=ROUTER)   # (E, d), bias-free; frozen unless train_router
    experts: tuple = dataclasses.field()                 # E blocks, each mapping d -> d
    top_k: int = dataclasses.field(metadata=STATIC)      # experts per token: in the treedef
    rule: str = dataclasses.field(default="topk", metadata=STATIC)   # routing rule: a ROUTINGS entry
    capacity: Optional[int] = dataclasses.field(default=None, metadata=STATIC)  # "switch": tokens
    #                                                   per expert per sequence; None: unlimited

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
        if self.rule not in ROUTINGS:
            raise ValueError(f"unknown routing rule {self.rule!r}; known: {', '.join(ROUTINGS)}")
        if self.rule == "switch" and self.top_k != 1:
            raise ValueError(f"switch routing is top-1, got top_k={self.top_k}")
        if self.capacity is not None and (self.rule != "switch" or self.capacity < 0):
            raise ValueError(f"capacity is a non-negative token count of switch routing, got {self.capacity!r} "
                             f"with rule {self.rule!r}")

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
        w, _ = self.routing(x)
        # As HF: each expert's output times its float32 weight, cast to x's dtype, accumulated
        # in x's dtype in expert order (weights 0 off the top-k add exact zeros).
        y = jnp.zeros_like(x)
        for e, block in enumerate(self.experts):
            y = y + (block(x, act).astype(jnp.float32) * w[..., e:e + 1]).astype(x.dtype)
        return y

    def routing(self, x: Array) -> tuple:
        """(weights (..., E), chosen indices (..., top_k)) of tokens x: which experts run, how much."""
        return route(self.router, x, self.top_k, self.rule, self.capacity)

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
        return dataclasses.replace(self, experts=blocks)


__all__ = ["MoEMLP", "ROUTINGS", "route", "switch_route"]
