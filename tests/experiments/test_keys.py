"""ntkfuse.experiments.keys: one PRNG key per named item, never shared between names."""
from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from ntkfuse.experiments.keys import indexed_key, name_index, named_key


def _raw(key) -> tuple:
    return tuple(np.asarray(jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
                            else key).ravel().tolist())


def test_indexed_key_is_fold_in_of_the_registry_index():
    reg = ("fusion", "cluster", "sketch")
    for i, name in enumerate(reg):
        assert _raw(indexed_key(7, reg, name)) == _raw(jax.random.fold_in(jax.random.PRNGKey(7), i))
    with pytest.raises(ValueError, match="not one of"):
        indexed_key(0, reg, "prune")


def test_named_key_is_stable_and_order_sensitive():
    assert _raw(named_key(0, "linear")) == _raw(jax.random.fold_in(jax.random.PRNGKey(0), name_index("linear")))
    assert _raw(named_key(0, "a", "b")) == _raw(named_key(named_key(0, "a"), "b"))
    assert _raw(named_key(0, "a", "b")) != _raw(named_key(0, "b", "a"))
    assert _raw(named_key(0, "a")) != _raw(named_key(1, "a"))
    assert 0 <= name_index("anything") < 2 ** 31
    with pytest.raises(ValueError):
        named_key(0)


def test_named_keys_of_many_names_are_distinct():
    names = [f"{m}-{t}-{s}" for m, t, s in itertools.product("abcdefgh", range(8), range(8))]
    assert len({_raw(named_key(0, n)) for n in names}) == len(names)
