"""Moved: the MLP kinds live in `ntkfuse.models.blocks` (one module per kind)."""
from .blocks import (MLP_KINDS, DenseMLP, FusedMLP, LinearMLP, LowRankLinearMLP, LowRankMLP, activation_fn,  # noqa: F401
                     apply_mlp, count_params, is_mlp)
