"""MLP block kinds and the protocol they share (`base.Block`).

The transformer forward calls `apply_mlp(block, x, activation)`; the block itself
decides what runs, so a compressed model is the same params tree with some MLP
subtrees replaced. Adding a kind means one module here and one entry in MLP_KINDS.
"""
from __future__ import annotations

import jax

from .base import (FIXED, FIXED_DTYPE, NEURON_TOKEN_GRADS, ROUTER, STATIC, Block, NeuronView, Probes, activation_fn,
                   as_fixed, block_kind, fixed_fields, lin, neuron_forward, static_fields)
from .dense import DenseMLP
from .fused import FusedMLP
from .gated import FusedGatedMLP, GatedMLP
from .linear import LinearMLP, LowRankLinearMLP
from .low_rank import LowRankMLP
from .low_rank_gated import LowRankGatedMLP
from .moe import MoEMLP
from .probe import Probed

MLP_KINDS = (DenseMLP, FusedMLP, LowRankMLP, LinearMLP, LowRankLinearMLP, GatedMLP, FusedGatedMLP, LowRankGatedMLP,
             MoEMLP)
KINDS_BY_NAME = {cls.__name__: cls for cls in MLP_KINDS}


def is_mlp(node) -> bool:
    return isinstance(node, Block)


def apply_mlp(block, x: jax.Array, activation: str) -> jax.Array:
    if not is_mlp(block):
        raise TypeError(f"not an MLP block: {type(block).__name__}; known kinds: "
                        f"{', '.join(k.__name__ for k in MLP_KINDS)}")
    return block(x, activation_fn(activation))


def count_params(block) -> int:
    """Parameters of a block or any tree of them (fixed fields are not parameters)."""
    if is_mlp(block):
        return block.param_count()
    from ...frozen import split_frozen   # frozen.py imports this package
    return int(sum(x.size for x in jax.tree_util.tree_leaves(split_frozen(block, train_router=True)[0])))


__all__ = ["Block", "block_kind", "fixed_fields", "static_fields", "as_fixed", "FIXED", "ROUTER", "STATIC", "FIXED_DTYPE",
           "activation_fn", "lin", "NeuronView", "Probes", "neuron_forward",
           "NEURON_TOKEN_GRADS", "DenseMLP", "FusedMLP", "LowRankMLP", "LinearMLP", "LowRankLinearMLP", "GatedMLP",
           "FusedGatedMLP", "LowRankGatedMLP", "MoEMLP", "Probed",
           "MLP_KINDS", "KINDS_BY_NAME", "is_mlp", "apply_mlp", "count_params"]
