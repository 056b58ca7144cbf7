"""Save and restore (compressed) models with orbax.

A params tree mixes dicts, the Python list of layers and MLP block dataclasses (with
static fields such as an MoE's top_k in their treedef), so orbax cannot rebuild it alone.
We save the arrays as a flat dict {"a0": ..., "a1": ...} with orbax and, beside it,
`ntkfuse.json` holding the tree structure (each block's kind by class name, its array
fields, None ones included — fixed ones such as FusedMLP.counts too — and its static
fields as JSON), the ModelConfig, array shapes/dtypes, the user's metadata (method, width,
layers, seed, ...) and the ntkfuse version. Arrays are stored exactly, so a restored
model gives bit-identical outputs.

Layout: PATH/arrays (orbax), PATH/ntkfuse.json. Written into a temporary sibling
directory and moved into place with os.replace (atomic on one file system).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np

from ..models import ModelConfig
from ..models.blocks import MLP_KINDS, as_fixed, fixed_fields, static_fields

# /3 stores fixed fields (fusion's counts) as arrays among "fields" and static fields under
# "static". Read too: /2 kept fixed and static fields as JSON under "fixed", /1 beside "fields".
FORMAT = "ntkfuse-compressed/3"
_READABLE = ("ntkfuse-compressed/1", "ntkfuse-compressed/2", FORMAT)
_KINDS = {cls.__name__: cls for cls in MLP_KINDS}


def _to_json(v):
    if isinstance(v, (tuple, list)):
        return [_to_json(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _from_json(v):
    """JSON lists back to tuples: static fields must be hashable (they are part of the treedef)."""
    return tuple(_from_json(x) for x in v) if isinstance(v, list) else v


def _encode(node, arrays):
    if node is None:
        return None
    if isinstance(node, dict):
        return {"t": "dict", "items": {str(k): _encode(v, arrays) for k, v in node.items()}}
    if isinstance(node, (list, tuple)):
        return {"t": "list" if isinstance(node, list) else "tuple", "items": [_encode(v, arrays) for v in node]}
    if isinstance(node, MLP_KINDS):
        static = static_fields(node)
        return {"t": "mlp", "kind": type(node).__name__,
                "fields": {f.name: _encode(getattr(node, f.name), arrays)
                           for f in dataclasses.fields(node) if f.name not in static},
                "static": {name: _to_json(getattr(node, name)) for name in static}}
    if hasattr(node, "shape") and hasattr(node, "dtype"):
        name = f"a{len(arrays)}"
        arrays[name] = node
        return {"t": "array", "name": name, "shape": list(node.shape), "dtype": str(np.dtype(node.dtype))}
    raise TypeError(f"cannot save a {type(node).__name__} in a params tree")


def _decode(spec, arrays):
    if spec is None:
        return None
    t = spec["t"]
    if t == "dict":
        return {k: _decode(v, arrays) for k, v in spec["items"].items()}
    if t in ("list", "tuple"):
        items = [_decode(v, arrays) for v in spec["items"]]
        return items if t == "list" else tuple(items)
    if t == "mlp":
        cls = _KINDS.get(spec["kind"])
        if cls is None:
            raise ValueError(f"unknown MLP kind {spec['kind']!r} in checkpoint; known: {', '.join(_KINDS)}")
        kw = {k: _decode(v, arrays) for k, v in spec["fields"].items()}
        # /3: "static"; /2: static and fixed fields as JSON under "fixed"; /1: beside "fields".
        # A static field added to a kind later (MoEMLP's rule, capacity) takes its default when absent.
        meta = spec["static"] if "static" in spec else spec.get("fixed", spec)
        kw.update({name: _from_json(meta[name]) for name in static_fields(cls) if name in meta})
        kw.update({name: as_fixed(meta[name]) for name in fixed_fields(cls) if name not in kw})
        return cls(**kw)
    if t == "array":
        return arrays[spec["name"]]
    raise ValueError(f"bad tree spec node {t!r}")


def _abstract(spec, out):
    """{array name: ShapeDtypeStruct} for orbax's restore target."""
    if spec is None:
        return out
    t = spec["t"]
    if t == "array":
        out[spec["name"]] = jax.ShapeDtypeStruct(tuple(spec["shape"]), np.dtype(spec["dtype"]))
    elif t == "dict":
        for v in spec["items"].values():
            _abstract(v, out)
    elif t in ("list", "tuple"):
        for v in spec["items"]:
            _abstract(v, out)
    elif t == "mlp":
        for v in spec["fields"].values():
            _abstract(v, out)
    return out


def save_compressed(path, cfg: ModelConfig, params: dict, meta: dict | None = None, *, overwrite: bool = False) -> Path:
    """Save `params` (any mix of MLP kinds) with `cfg` and JSON-serialisable `meta`
    (e.g. {"method", "width", "layers", "seed"}) to directory `path`."""
    import orbax.checkpoint as ocp
    from .. import __version__
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    arrays = {}
    tree = _encode(params, arrays)
    info = {"format": FORMAT, "ntkfuse_version": __version__, "config": cfg.to_dict(), "meta": meta or {},
            "tree": tree}
    text = json.dumps(info, indent=1)   # fails early if meta is not JSON-serialisable
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / "arrays", arrays)
        (tmp / "ntkfuse.json").write_text(text)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def restore_compressed(path):
    """(cfg, params, meta) from a directory written by `save_compressed`; meta gains
    "ntkfuse_version" (the version that saved it)."""
    import orbax.checkpoint as ocp
    path = Path(path).absolute()
    info_file = path / "ntkfuse.json"
    if not info_file.exists():
        raise FileNotFoundError(f"{path} is not an ntkfuse compressed checkpoint (no ntkfuse.json)")
    info = json.loads(info_file.read_text())
    if info.get("format") not in _READABLE:
        raise ValueError(f"{path}: unsupported format {info.get('format')!r}; expected one of {', '.join(_READABLE)}")
    target = _abstract(info["tree"], {})
    with ocp.StandardCheckpointer() as ckptr:
        arrays = ckptr.restore(path / "arrays", target)
    params = _decode(info["tree"], arrays)
    cfg = ModelConfig.from_dict(info["config"])
    meta = dict(info["meta"], ntkfuse_version=info["ntkfuse_version"])
    return cfg, params, meta
