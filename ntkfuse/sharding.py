"""Device meshes for the data-parallel parts (NTK examples, ...): a 1-D `Mesh` over local
devices and the `NamedSharding`s used with it. No hand-written collectives: arrays are
placed with these shardings and `jit`/`shard_map` let XLA's partitioner move data.

The user switch everywhere is `devices=`:
    "auto"  all local devices when more than one is visible, else no mesh (the default);
    None/1  no mesh: the single-device code path, numbers exactly as before;
    n       the first n local devices;
    a sequence of devices, or a ready `Mesh` (its first axis is used).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


class ShardingError(ValueError):
    """A bad `devices=` argument."""


def make_mesh(devices="auto") -> Optional[Mesh]:
    """A 1-D mesh (axis `AXIS`) for `devices` (see the module doc), or None for one device."""
    if isinstance(devices, Mesh):
        return devices if devices.devices.size > 1 else None
    if devices is None:
        return None
    local = jax.local_devices()
    if isinstance(devices, str):
        if devices != "auto":
            raise ShardingError(f"devices must be 'auto', None, a count, devices or a Mesh; got {devices!r}")
        chosen = local
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(local):
            raise ShardingError(f"devices={devices}: between 1 and the {len(local)} local devices")
        chosen = local[:int(devices)]
    else:
        chosen = list(devices)
        if not chosen:
            raise ShardingError("devices: an empty list")
    if len(chosen) <= 1:
        return None
    return Mesh(np.array(chosen), (AXIS,))


def mesh_axis(mesh: Mesh) -> str:
    return mesh.axis_names[0]


def size(mesh: Optional[Mesh]) -> int:
    return 1 if mesh is None else int(mesh.devices.size)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters)."""
    return NamedSharding(mesh, P())


def rows(mesh: Mesh) -> NamedSharding:
    """The leading axis split across the mesh (examples, tokens, layers)."""
    return NamedSharding(mesh, P(mesh_axis(mesh)))


def padded(n: int, mesh: Optional[Mesh]) -> int:
    """n rounded up to a multiple of the mesh size."""
    m = size(mesh)
    return -(-int(n) // m) * m


def pad_rows(tree, n_to: int):
    """Pad every leaf's leading axis to `n_to` with copies of row 0 (results for them are dropped)."""
    def pad(a):
        a = jnp.asarray(a)
        extra = n_to - a.shape[0]
        return a if extra <= 0 else jnp.concatenate([a, jnp.broadcast_to(a[:1], (extra,) + a.shape[1:])])
    return jax.tree_util.tree_map(pad, tree)


def shard_rows(tree, mesh: Mesh):
    """Leading axes padded to a multiple of the mesh size and split across it."""
    n = jax.tree_util.tree_leaves(tree)[0].shape[0]
    return jax.device_put(pad_rows(tree, padded(n, mesh)), rows(mesh))


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, replicated(mesh))


def to_default_device(tree):
    """Results back as ordinary (uncommitted, default-device) arrays, so callers can mix them
    with arrays computed without a mesh."""
    return jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a)), tree)


__all__ = ["AXIS", "ShardingError", "make_mesh", "mesh_axis", "size", "replicated", "rows", "padded", "pad_rows",
           "shard_rows", "replicate", "to_default_device"]
