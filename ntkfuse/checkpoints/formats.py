"""Weight-file readers: every tensor of a checkpoint directory by its PyTorch name.

In order of preference: `model.safetensors`, sharded safetensors
(`model.safetensors.index.json`), HF Flax `flax_model.msgpack`, and `pytorch_model.bin`
(sharded too; only when torch is installed). ntkfuse parses safetensors and msgpack
itself, so neither torch nor flax is needed at run time. Safetensors are indexed, not read:
the loader reads one tensor at a time (`LazyTensor`), so a checkpoint larger than the free
memory beside its params loads. A damaged file is a
`CheckpointError` naming the file and what is wrong.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import ml_dtypes
import numpy as np

from .errors import CheckpointError

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
              "BOOL": np.bool_}


ALIGN = 64   # bytes: XLA's CPU client adopts a host array this aligned instead of copying it


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised array whose data starts on an `ALIGN`-byte boundary, so that
    `jax.device_put` of it on CPU takes the buffer as is (no second copy)."""
    dtype = np.dtype(dtype)
    n = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    buf = np.empty(n + ALIGN, np.uint8)
    start = -buf.ctypes.data % ALIGN
    return buf[start:start + n].view(dtype).reshape(shape)


class LazyTensor:
    """One tensor of a safetensors file, read only when asked (`read()` or `np.asarray`).

    The loader streams a checkpoint through these: each tensor's bytes are read into a
    fresh array with plain file reads (no memory map, so the file's pages never count in
    the process's memory), converted and placed, and dropped before the next is read.
    `shape`, `dtype` and `ndim` come from the header, so names and shapes can be checked
    without reading any data."""

    __slots__ = ("path", "start", "shape", "dtype")

    def __init__(self, path: Path, start: int, shape: tuple, dtype):
        self.path, self.start, self.shape, self.dtype = path, start, tuple(shape), np.dtype(dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.shape, dtype=np.int64))

    def read(self) -> np.ndarray:
        out = aligned_empty(self.shape, self.dtype)
        with open(self.path, "rb") as f:
            f.seek(self.start)
            got = f.readinto(out.reshape(-1).view(np.uint8)) if out.size else 0
        if got != self.nbytes:
            raise CheckpointError(f"{self.path}: truncated safetensors file: {got} of {self.nbytes} bytes "
                                  f"of a tensor at offset {self.start}")
        return out

    def __array__(self, dtype=None, copy=None):
        a = self.read()
        return a if dtype is None else a.astype(dtype)

    def __repr__(self):
        return f"LazyTensor({self.path.name}@{self.start}, shape={self.shape}, dtype={self.dtype})"


def index_safetensors(path: Path, keep: Callable[[str], bool] = lambda k: True) -> dict[str, LazyTensor]:
    """Every tensor of a .safetensors file (8-byte header size, JSON header, raw little-endian
    data) as a `LazyTensor`: the header is parsed and checked, no data is read."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
        n = int.from_bytes(head, "little")
        if n <= 0 or 8 + n > size:
            raise CheckpointError(f"{path}: corrupt safetensors header (header size {n}, file size {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from e
    header.pop("__metadata__", None)
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"{path}: truncated safetensors file: the header promises {8 + n + end} bytes, "
                              f"the file has {size}")
    out = {}
    for key, v in header.items():
        if not keep(key):
            continue
        if v["dtype"] not in _ST_DTYPES:
            raise CheckpointError(f"{path}: tensor {key} has unsupported dtype {v['dtype']}")
        a, b = v["data_offsets"]
        dt = np.dtype(_ST_DTYPES[v["dtype"]])
        if (b - a) != dt.itemsize * int(np.prod(v["shape"], dtype=np.int64)):
            raise CheckpointError(f"{path}: tensor {key} has {b - a} bytes for shape {v['shape']}")
        out[key] = LazyTensor(path, 8 + n + a, v["shape"], dt)
    return out


def read_safetensors(path: Path, keep: Callable[[str], bool] = lambda k: True) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file, read into memory (`index_safetensors` reads none)."""
    return {k: t.read() for k, t in index_safetensors(path, keep).items()}


def _msgpack_ext(code, data):
    import msgpack
    if code in (1, 3):  # flax's ndarray / numpy scalar encoding: (shape, dtype name, bytes)
        shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
        name = dtype_name.decode()
        dt = ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)
        return np.frombuffer(buffer, dtype=dt).reshape(shape)
    return msgpack.ExtType(code, data)


def _unchunk(tree):
    if isinstance(tree, dict):
        if "__msgpack_chunked_array__" in tree:
            shape = tuple(tree["shape"][str(i)] for i in range(len(tree["shape"])))
            chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
            return np.concatenate(chunks).reshape(shape)
        return {k: _unchunk(v) for k, v in tree.items()}
    return tree


def read_flax_msgpack(path: Path) -> dict[str, np.ndarray]:
    """HF Flax checkpoint -> PyTorch-style names (kernel -> weight transposed, scale/embedding -> weight)."""
    import msgpack
    try:
        tree = msgpack.unpackb(path.read_bytes(), ext_hook=_msgpack_ext, raw=False, strict_map_key=False)
    except Exception as e:
        raise CheckpointError(f"{path}: corrupt or truncated Flax msgpack file ({type(e).__name__}: {e})") from e
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: not a Flax params tree")
    tree = _unchunk(tree)
    if set(tree) == {"params"}:
        tree = tree["params"]
    out = {}

    def walk(node, prefix):
        for k, v in node.items():
            name = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict):
                walk(v, name)
                continue
            head, leaf = name.rsplit(".", 1) if "." in name else ("", name)
            if leaf == "kernel":
                out[f"{head}.weight"] = np.ascontiguousarray(np.asarray(v).T)
            elif leaf in ("scale", "embedding"):
                out[f"{head}.weight"] = np.asarray(v)
            else:
                out[name] = np.asarray(v)

    walk(tree, "")
    return out


def read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(f"{path}: reading pytorch_model.bin needs torch (pip install torch==2.13.0), "
                              "or convert the checkpoint to safetensors") from e
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: corrupt or truncated PyTorch checkpoint ({type(e).__name__}: {e})") from e
    out = {}
    for k, t in sd.items():
        t = t.detach().contiguous()
        if t.dtype == torch.bfloat16:
            out[k] = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            out[k] = t.numpy()
    return out


def _read_sharded(index: Path, reader) -> dict[str, np.ndarray]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except Exception as e:
        raise CheckpointError(f"{index}: corrupt shard index ({e})") from e
    out = {}
    for shard in sorted(set(weight_map.values())):
        f = index.parent / shard
        if not f.is_file():
            raise CheckpointError(f"{index}: shard {shard} is missing")
        out.update(reader(f))
    return out


# Weight files in order of preference, with their readers.
_READERS = (
    ("model.safetensors", index_safetensors),
    ("model.safetensors.index.json", lambda p: _read_sharded(p, index_safetensors)),
    ("flax_model.msgpack", read_flax_msgpack),
    ("pytorch_model.bin", read_torch_bin),
    ("pytorch_model.bin.index.json", lambda p: _read_sharded(p, read_torch_bin)),
)
WEIGHT_FILES = tuple(name for name, _ in _READERS)


def read_weights(directory: Path) -> tuple[dict, Path]:
    """All tensors of a checkpoint directory by PyTorch name, and the file they came from.
    Safetensors tensors are `LazyTensor`s (nothing read yet; `np.asarray` reads one), the
    other formats' arrays are in memory (their files are parsed whole)."""
    d = Path(directory)
    for fname, reader in _READERS:
        p = d / fname
        if p.is_file():
            if p.stat().st_size == 0:
                raise CheckpointError(f"{p}: empty weight file")
            return reader(p), p
    raise CheckpointError(f"{d}: no weight file found (looked for {', '.join(WEIGHT_FILES)})")
