"""The layer stack: one family's per-layer function run over `params["layers"]`.

Two ways, same numbers: a Python loop over the list (each layer may have its own MLP
kind and width), or, with `cfg.scan_layers`, `jax.lax.scan` over each maximal run of
consecutive layers whose layer dicts have the same pytree structure (MLP kind, fixed
metadata such as fusion counts, None biases) and the same leaf shapes and dtypes, so a
deep uniform model compiles one layer instead of N. The params stay a list: each run is
stacked inside the traced function. `cfg.remat` wraps the layer in `jax.checkpoint`
(recompute activations in the backward pass instead of storing them).

Layer i's dropout key is `fold_in(rng, i)` either way (a scanned input under scan), so
dropout masks do not depend on the switch either.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def layer_runs(layers) -> list[tuple[int, int]]:
    """[(start, stop)] of maximal runs of consecutive layers that can share one scan."""
    def sig(lp):
        leaves, treedef = jax.tree_util.tree_flatten(lp)
        return treedef, tuple((tuple(x.shape), jnp.dtype(x.dtype)) for x in leaves)

    runs, start = [], 0
    sigs = [sig(lp) for lp in layers]
    for i in range(1, len(layers) + 1):
        if i == len(layers) or sigs[i] != sigs[start]:
            runs.append((start, i))
            start = i
    return runs


def run_layers(layer: Callable, layers, h, *, scan: bool = False, remat: bool = False, rng=None):
    """Apply `layer(lp, h, key) -> (h, aux)` over `layers` in order; returns (h, [aux per layer]).

    `aux` is any pytree (None when nothing is collected); under scan it is stacked by the
    scan and split back per layer, so callers see the same list either way. `key` is None
    when `rng` is None.
    """
    fn = jax.checkpoint(layer) if remat else layer
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
