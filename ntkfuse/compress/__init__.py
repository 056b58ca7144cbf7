"""One-shot compression of MLP blocks (METHOD.md §2), k-means in JAX, accounting and
orbax save/restore of compressed models."""
from __future__ import annotations

from .accounting import (compression_rows, expert_rows, mlp_flops_per_token, nonzero_params, param_count,
                         print_compression_table)
from .kmeans import KMeansResult, kmeans, kmeans_batched
from .methods import (METHODS, OPTIONS, RANDOM_METHODS, CompressionError, check_method_options, check_methods, compress, compress_block, kmeans_layers, mmd2, neuron_features,
                      neuron_scores, svd_rank_for_width)
from ..checkpoints.orbax import restore_compressed, save_compressed

__all__ = ["METHODS", "OPTIONS", "RANDOM_METHODS", "CompressionError", "check_methods", "check_method_options", "compress", "compress_block", "kmeans", "kmeans_batched", "kmeans_layers",
           "KMeansResult", "neuron_features", "neuron_scores", "svd_rank_for_width", "mmd2", "param_count",
           "nonzero_params", "mlp_flops_per_token", "compression_rows", "expert_rows", "print_compression_table",
           "save_compressed", "restore_compressed"]
