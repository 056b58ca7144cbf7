"""Empirical NTK of a scalar output per example w.r.t. a selected parameter subset, and
the approximation-error metrics of compressed models (METHOD.md §3)."""
from __future__ import annotations

from . import kernels as kernels_module
from .kernels import (GRAM_IMPLS, GRAM_PRECISIONS, KINDS, STRATEGIES, NTKConfigError, Plan, default_memory_budget, flatten_grads, kernels,
                      per_example_grads, plan_kernels)
from .analysis import centred_kernel_alignment, kernel_accuracy, kernel_regression, kernel_spectrum, layer_kernels
from .generic import empirical_ntk_fn
from .metrics import MetricError, changed_layers, ntk_error, output_error
from .outputs import OutputError, class_prob, logit, logit_diff, target_logprob
from .selectors import Selector, SelectorError, all_mlps, all_params, by_path, mlp_layers

__all__ = ["KINDS", "STRATEGIES", "GRAM_PRECISIONS", "GRAM_IMPLS", "NTKConfigError", "Plan", "kernels", "plan_kernels", "per_example_grads",
           "flatten_grads", "default_memory_budget", "MetricError", "ntk_error", "output_error", "changed_layers",
           "OutputError", "empirical_ntk_fn", "layer_kernels", "centred_kernel_alignment", "kernel_spectrum",
           "kernel_regression", "kernel_accuracy", "class_prob", "logit", "logit_diff", "target_logprob", "Selector", "SelectorError",
           "mlp_layers", "all_mlps", "all_params", "by_path"]
