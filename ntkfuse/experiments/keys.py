"""PRNG keys per named item (method, surrogate kind, task, seed ...).

A key must depend on the item's name only, not on which other items run or in which
order, and two names must never share one. Two ways:
  * `indexed_key`: fold in the name's position in a fixed registry (ntk_compare's
    methods: `fold_in(PRNGKey(seed), METHODS.index(method))`, kept for its numbers);
  * `named_key`: fold in a hash of the name, for open-ended names (surrogate kinds
    'bottleneck-<method>', tuples such as (method, task, lr, seed)).
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import jax


def name_index(name) -> int:
    """A stable 31-bit integer of `name` (its `str`): the first 4 bytes of its sha256."""
    return int.from_bytes(hashlib.sha256(str(name).encode()).digest()[:4], "big") & 0x7FFFFFFF


def _base(seed_or_key):
    return jax.random.PRNGKey(seed_or_key) if isinstance(seed_or_key, int) else seed_or_key


def indexed_key(seed_or_key, registry: Sequence[str], name: str):
    """`fold_in(PRNGKey(seed), registry.index(name))`; ValueError for a name not in the registry."""
    if name not in registry:
        raise ValueError(f"{name!r} is not one of {', '.join(map(str, registry))}")
    return jax.random.fold_in(_base(seed_or_key), list(registry).index(name))


def named_key(seed_or_key, *names):
    """The key of the item named by `names` (one or more parts, e.g. (kind,) or (method, seed)):
    `seed_or_key` with each part's `name_index` folded in, in order."""
    if not names:
        raise ValueError("named_key needs at least one name")
    key = _base(seed_or_key)
    for n in names:
        key = jax.random.fold_in(key, name_index(n))
    return key


__all__ = ["name_index", "indexed_key", "named_key"]
