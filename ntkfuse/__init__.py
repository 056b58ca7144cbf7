"""ntkfuse: compress the MLP blocks of pretrained transformers in JAX and measure
what each replacement does to outputs and to the empirical NTK."""
from __future__ import annotations

__version__ = "0.1.0"

from .checkpoints import CheckpointError, Loaded, load, load_tokenizer
from .data.tokenize import tokenize
from .models import (DenseMLP, FusedGatedMLP, FusedMLP, GatedMLP, LinearMLP, LowRankGatedMLP, LowRankLinearMLP,
                     LowRankMLP,
                     ModelConfig, ModelOutput,
                     check_batch, forward, get_mlp, init_params, jit_forward, replace_mlps)

__all__ = ["__version__", "CheckpointError", "Loaded", "load", "load_tokenizer", "tokenize", "ModelConfig",
           "ModelOutput", "forward", "jit_forward", "check_batch", "init_params", "get_mlp", "replace_mlps",
           "DenseMLP", "FusedMLP", "LowRankMLP", "LinearMLP", "LowRankLinearMLP",
           "GatedMLP", "FusedGatedMLP", "LowRankGatedMLP"]
