"""Parameter and FLOP accounting for original vs compressed MLP blocks.

FLOPs per token of one MLP block count a multiply-add as 2 FLOPs, plus one FLOP per
bias add, per activation evaluation and per fusion scaling (diag(n)); layer norms and
attention are not MLP FLOPs. Zeroed weights (magnitude pruning) still count as dense
FLOPs — `nonzero_params` reports the sparsity separately.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np

from ..frozen import split_frozen
from ..models.blocks import count_params, is_mlp


def param_count(obj, layers: Sequence[int] | None = None) -> int:
    """Parameters of a block, of a whole params tree, or (with `layers`) of those layers'
    MLP blocks only. Fusion's counts are fixed leaves, not parameters."""
    if layers is not None and not is_mlp(obj):
        return sum(count_params(obj["layers"][l]["mlp"]) for l in layers)
    return count_params(obj)


def nonzero_params(obj, layers: Sequence[int] | None = None) -> int:
    """Like `param_count` but counting only nonzero entries (fixed fields are not parameters)."""
    if layers is not None:
        obj = [obj["layers"][l]["mlp"] for l in layers]
    params = split_frozen(obj, train_router=True)[0]
    return int(sum(int(np.count_nonzero(np.asarray(x))) for x in jax.tree_util.tree_leaves(params)))


def mlp_flops_per_token(block) -> int:
    """FLOPs for one token through `block` (see the module docstring for the convention)."""
    if not is_mlp(block):
        raise TypeError(f"not an MLP block: {type(block).__name__}")
    return block.flops_per_token()


def expert_rows(params: dict, layers: Sequence[int]) -> list[dict]:
    """One row per expert of the MoE blocks (MoEMLP) of `layers`: layer, expert, kind, width,
    trainable params and FLOPs/token of the expert alone. A block's total (`param_count`) adds
    its router; its FLOPs/token (`mlp_flops_per_token`) count the router and top_k experts."""
    rows = []
    for l in layers:
        subs = params["layers"][l]["mlp"].sub_blocks()
        for e, b in enumerate(subs or ()):
            rows.append({"layer": int(l), "expert": e, "kind": type(b).__name__, "width": int(b.width),
                         "params": count_params(b), "flops_per_token": mlp_flops_per_token(b)})
    return rows


def compression_rows(variants: Mapping[str, dict], layers: Sequence[int]) -> list[dict]:
    """One row per named params tree (e.g. {"original": p, "fusion": p_f, ...}): MLP params,
    nonzero MLP params and MLP FLOPs/token summed over `layers`, total model params, and
    ratios to the first entry."""
    rows = []
    for name, p in variants.items():
        blocks = [p["layers"][l]["mlp"] for l in layers]
        rows.append({"name": name, "kinds": sorted({type(b).__name__ for b in blocks}),
                     "widths": [int(b.width) for b in blocks],
                     "mlp_params": sum(count_params(b) for b in blocks),
                     "mlp_nonzero": nonzero_params(p, layers),
                     "mlp_flops_per_token": sum(mlp_flops_per_token(b) for b in blocks),
                     "model_params": param_count(p)})
    if rows:
        ref = rows[0]
        for r in rows:
            for key in ("mlp_params", "mlp_flops_per_token", "model_params"):
                r[key + "_ratio"] = r[key] / ref[key] if ref[key] else float("nan")
    return rows


def print_compression_table(variants: Mapping[str, dict], layers: Sequence[int], file=None) -> list[dict]:
    """Print original vs each compressed variant (params, nonzeros, FLOPs/token); returns the rows."""
    rows = compression_rows(variants, layers)
    head = f"{'variant':<12} {'MLP kind':<12} {'MLP params':>12} {'nonzero':>12} {'MLP FLOPs/tok':>14} " \
           f"{'ratio':>6} {'model params':>13} {'ratio':>6}"
    lines = [f"MLP blocks of layers {list(layers)}", head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['name']:<12} {','.join(r['kinds']):<12} {r['mlp_params']:>12,} {r['mlp_nonzero']:>12,} "
                     f"{r['mlp_flops_per_token']:>14,} {r['mlp_flops_per_token_ratio']:>6.3f} "
                     f"{r['model_params']:>13,} {r['model_params_ratio']:>6.3f}")
    print("\n".join(lines), file=file)
    return rows
