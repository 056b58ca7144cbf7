"""MLP block kinds (being moved here from models/mlp.py)."""
from ..mlp import (MLP_KINDS, DenseMLP, FusedMLP, LinearMLP, LowRankLinearMLP, LowRankMLP, activation_fn,  # noqa: F401
                   apply_mlp, count_params, is_mlp)
