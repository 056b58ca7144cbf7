"""Module-level distillation (METHOD.md §4): collect each chosen MLP block's token
pairs from the original model, fit smaller surrogates with optax, tune them
layer-wise against the teacher's hidden states, and allocate widths per layer from
singleton sensitivities under a parameter budget."""
from __future__ import annotations

from .allocation import AllocationError, Option, Plan, greedy, knapsack, options_from_sensitivity
from .build import KINDS, SurrogateError, block_dim, init_surrogates, random_bottleneck, random_like
from .collect import (CollectError, batches_from_texts, capacity_bound, check_layers, collect_layer_pairs, collect_pairs,
                      iter_pairs, layer_mask, without_capacity)
from .fit import FitConfig, FitError, FitResult, evaluate_blocks, fit_blocks, fit_grouped, stack_blocks, unstack_blocks
from .linear import RidgeStats, fit_ridge, low_rank_from_linear
from .sensitivity import SensitivityError, layer_sensitivity, output_kl, replace_one, sensitivity_options
from .tuning import TuneConfig, TuneError, hidden_loss, layerwise_tune

__all__ = ["AllocationError", "Option", "Plan", "greedy", "knapsack", "options_from_sensitivity", "KINDS",
           "SurrogateError", "block_dim", "init_surrogates", "random_bottleneck", "random_like", "CollectError", "batches_from_texts",
           "capacity_bound", "check_layers", "collect_layer_pairs", "collect_pairs", "iter_pairs", "layer_mask",
           "without_capacity", "FitConfig", "FitError", "FitResult", "evaluate_blocks",
           "fit_blocks", "fit_grouped", "stack_blocks", "unstack_blocks", "RidgeStats", "fit_ridge", "low_rank_from_linear",
           "SensitivityError", "layer_sensitivity", "output_kl", "replace_one", "sensitivity_options",
           "TuneConfig", "TuneError", "hidden_loss", "layerwise_tune"]
