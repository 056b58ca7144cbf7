"""MLP block kinds and the protocol they share (`base.Block`).

The transformer forward calls `apply_mlp(block, x, activation)`; the block itself
decides what runs, so a compressed model is the same params tree with some MLP
subtrees replaced. Adding a kind means one module here and one entry in MLP_KINDS.
"""
from __future__ import annotations

import jax

from .base import (NEURON_TOKEN_GRADS, Block, NeuronView, Probes, activation_fn, block_kind, fixed_fields, lin,
                   neuron_forward)
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
    """Trainable parameters of a block or any tree of them (fixed fields are not parameters)."""
    if is_mlp(block):
        return block.param_count()
    return int(sum(x.size for x in jax.tree_util.tree_leaves(block)))


__all__ = ["Block", "block_kind", "fixed_fields", "activation_fn", "lin", "NeuronView", "Probes", "neuron_forward",
           "NEURON_TOKEN_GRADS", "DenseMLP", "FusedMLP", "LowRankMLP", "LinearMLP", "LowRankLinearMLP", "GatedMLP",
           "FusedGatedMLP", "LowRankGatedMLP", "MoEMLP", "Probed",
           "MLP_KINDS", "KINDS_BY_NAME", "is_mlp", "apply_mlp", "count_params"]
