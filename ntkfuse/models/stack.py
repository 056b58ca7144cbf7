"""The layer stack: one family's per-layer function run over `params["layers"]`.

Two ways, same numbers: a Python loop over the list (each layer may have its own MLP
kind and width), or, with `cfg.scan_layers`, `jax.lax.scan` over each maximal run of
consecutive layers whose layer dicts have the same pytree structure (MLP kind, static
fields, None biases) and the same leaf shapes and dtypes, so a deep uniform model compiles
one layer instead of N (fused layers too, whatever their cluster sizes: those are leaves).
The params stay a list: each run is stacked inside the traced function. `cfg.remat` wraps
the layer in `jax.checkpoint` (recompute activations in the backward pass instead of
storing them): True stores only the layer's input; "dots" also stores the outputs of its
un-batched matmuls (the projections and MLP matmuls) and recomputes the rest — attention
scores and probabilities, softmax, dropout masks, GELU, LayerNorm — which costs a few % of
the FLOPs and saves the (B, H, T, T) attention tensors that otherwise dominate a training
step's memory.

Layer i's dropout key is `fold_in(rng, i)` either way (a scanned input under scan), so
dropout masks do not depend on the switch either.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def layer_runs(layers) -> list[tuple[int, int]]:
    """[(start, stop)] of maximal runs of consecutive layers that can share one scan.

    Leaves must also be of the same tracer type: stacking a leaf that is being
    differentiated (or vmapped) with one that is a constant would make the scan compute
    the derivative (or the batch) for every layer of the run, e.g. per-example weight
    gradients of layers the NTK does not select."""
    def sig(lp):
        leaves, treedef = jax.tree_util.tree_flatten(lp)
        return treedef, tuple((tuple(x.shape), jnp.dtype(x.dtype), type(x)) for x in leaves)

    runs, start = [], 0
    sigs = [sig(lp) for lp in layers]
    for i in range(1, len(layers) + 1):
        if i == len(layers) or sigs[i] != sigs[start]:
            runs.append((start, i))
            start = i
    return runs


REMAT = (False, True, "dots")


def _remat(layer: Callable, remat) -> Callable:
    if remat is False or remat is None:
        return layer
    if remat is True:
        return jax.checkpoint(layer)
    if remat == "dots":
        return jax.checkpoint(layer, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    raise ValueError(f"remat must be one of {REMAT}, got {remat!r}")


def run_layers(layer: Callable, layers, h, *, scan: bool = False, remat: bool = False, rng=None):
    """Apply `layer(lp, h, key) -> (h, aux)` over `layers` in order; returns (h, [aux per layer]).

    `aux` is any pytree (None when nothing is collected); under scan it is stacked by the
    scan and split back per layer, so callers see the same list either way. `key` is None
    when `rng` is None.
    """
    fn = _remat(layer, remat)
    auxs = []
    for start, stop in (layer_runs(layers) if scan else [(i, i + 1) for i in range(len(layers))]):
        if stop - start == 1:
            h, aux = fn(layers[start], h, None if rng is None else jax.random.fold_in(rng, start))
            auxs.append(aux)
            continue
        stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers[start:stop])
        keys = None if rng is None else jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(start, stop))
        h, ys = jax.lax.scan(lambda c, x: fn(x[0], c, x[1]), h, (stacked, keys))
        auxs.extend(jax.tree_util.tree_map(lambda y, i=i: y[i], ys) for i in range(stop - start))
    return h, auxs
