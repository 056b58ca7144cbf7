"""ntkfuse.experiments.hashing: the hash that decides whether saved results are reused."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from ntkfuse.experiments.hashing import config_hash, stable_json, tag


def test_config_hash_is_sha256_of_sorted_json_then_arrays():
    key = {"b": (1, 2), "a": "x"}
    arrays = {"y": np.arange(3, dtype=np.int32), "x": np.ones((2, 2), np.float32)}
    h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode())
    for k in ("x", "y"):
        h.update(k.encode() + str(arrays[k].shape).encode() + arrays[k].tobytes())
    assert config_hash(key, arrays) == h.hexdigest()[:16]
    assert config_hash(key) == hashlib.sha256(stable_json(key).encode()).hexdigest()[:16]


def test_config_hash_ignores_dict_order_but_not_values_or_array_bytes():
    a = {"x": np.arange(4)}
    assert config_hash({"p": 1, "q": 2}, a) == config_hash({"q": 2, "p": 1}, a)
    assert config_hash({"p": 1}, a) != config_hash({"p": 2}, a)
    assert config_hash({"p": 1}, a) != config_hash({"p": 1}, {"x": np.arange(4) + 1})
    # same bytes, other shape
    assert config_hash({}, {"x": np.arange(4)}) != config_hash({}, {"x": np.arange(4).reshape(2, 2)})


@pytest.mark.parametrize("n", [8, 16, 64])
def test_tag_length_and_order_sensitivity(n):
    assert len(tag("h", "fusion", {"n_init": 3}, 2, n=n)) == n
    assert tag("h", "fusion") != tag("fusion", "h")
    assert tag("h", {"a": 1, "b": 2}) == tag("h", {"b": 2, "a": 1})
