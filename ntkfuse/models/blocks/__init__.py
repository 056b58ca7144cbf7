"""MLP block kinds (being moved here from models/mlp.py)."""
from ..mlp import (MLP_KINDS, DenseMLP, FusedMLP, LinearMLP, LowRankLinearMLP, LowRankMLP, activation_fn,  # noqa: F401
                   apply_mlp, count_params, is_mlp)


def fixed_fields(block_or_cls) -> tuple:
    """Names of a block kind's fixed fields (never trained: static pytree metadata, not
    leaves), declared on the dataclass with `dataclasses.field(metadata={"fixed": True})`."""
    import dataclasses
    return tuple(f.name for f in dataclasses.fields(block_or_cls) if f.metadata.get("fixed"))
