"""Stable hashes of a run's configuration: the tag that decides whether a saved result
may be reused. JSON with sorted keys (non-JSON values by `str`), then the raw bytes of
any arrays, so the same settings and inputs give the same hash on every machine."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping, Optional

import numpy as np


def stable_json(obj: Any) -> str:
    """Compact JSON with sorted keys; values JSON cannot hold are written with `str`."""
    return json.dumps(obj, sort_keys=True, default=str)


def config_hash(key: Any, arrays: Optional[Mapping[str, Any]] = None, n: int = 16) -> str:
    """Hex sha256 (first `n` characters) of `key` (JSON-able settings) and `arrays`
    (name -> array; name, shape and bytes enter, in sorted name order)."""
    h = hashlib.sha256(stable_json(key).encode())
    for k in sorted(arrays or {}):
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()[:n]


def tag(*parts: Any, n: int = 16) -> str:
    """Hex sha256 (first `n` characters) of the JSON list of `parts`: e.g. a row's tag
    from the run's hash, the row id, its options and a format version."""
    return hashlib.sha256(stable_json(list(parts)).encode()).hexdigest()[:n]


__all__ = ["stable_json", "config_hash", "tag"]
