"""Loading Hugging Face checkpoints into ntkfuse's params layout.

`load(name_or_path)` resolves the checkpoint (`hub.py`), reads `config.json` into a
`ModelConfig` (the family registered for its `model_type` reads it), reads the weights
(`formats.py`) and maps them through the family's HF weight-name map. Every problem is
a `CheckpointError` naming the file and what is wrong: unsupported model type, missing or
mis-shaped weights (before any tensor is read), NaN/inf (naming the tensor). Tensors are
streamed one at a time from the file to the device (`params_from_tensors`), so loading
needs the params' memory plus about one tensor, not two copies of the checkpoint.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from ..dtypes import as_dtype
from ..models import FAMILIES, ModelConfig, UnsupportedModelError, get_family, init_head
from .errors import CheckpointError
from .formats import aligned_empty, read_weights
from .hub import DEFAULT_ALIASES, DEFAULT_MODEL, resolve
from .mapping import Taker, canonical
from .tokenizer import load_tokenizer


class Loaded(NamedTuple):
    cfg: ModelConfig
    params: dict
    path: Path
    tokenizer: Any = None


# Model prefixes of HF weight names, of every family (a checkpoint of one family never
# carries another's), and the generic "model.".
_PREFIXES = tuple(p for f in FAMILIES.values() for p in f.hf_prefixes) + ("model.",)


_FINITE_CHUNK = 1 << 24   # elements per NaN/inf check: bounds its temporaries (16 MB of bools)


def _all_finite(a: np.ndarray) -> bool:
    """No NaN/inf in a float array, checked in chunks so that a large tensor needs no full-size
    temporary (ml_dtypes' isfinite handles bfloat16 natively)."""
    if not (np.issubdtype(a.dtype, np.floating) or a.dtype == ml_dtypes.bfloat16):
        return True
    flat = a.reshape(-1)
    return all(np.isfinite(flat[i:i + _FINITE_CHUNK]).all() for i in range(0, flat.size, _FINITE_CHUNK))


def _cast(a: np.ndarray, dtype) -> np.ndarray:
    out = aligned_empty(a.shape, dtype)
    out[...] = a
    return out


def _placer(dtype, source: str):
    """`Taker`'s `place`: check one host tensor for NaN/inf, cast it to `dtype` on the host (halves
    what crosses to an accelerator for float32 → bfloat16) and put it on the default device,
    waiting for the copy. The host array is not kept, so it is freed before the next is read."""
    def place(name, a):
        if not _all_finite(a):
            raise CheckpointError(f"{source}: weights contain NaN or inf (tensor {name})")
        if a.dtype != dtype:
            a = _cast(a, dtype)
        # device_put of an aligned array: on CPU the params adopt the host buffer (jnp.asarray
        # would copy it); on an accelerator it is copied, and waiting for the copy lets the
        # host buffer be freed before the next tensor is read
        return jax.device_put(a).block_until_ready()
    return place


def params_from_tensors(cfg: ModelConfig, tensors: dict, dtype=jnp.float32, source: str = "checkpoint") -> dict:
    """Map PyTorch-named tensors (arrays, or `LazyTensor`s read on demand) onto ntkfuse's params
    tree through the family's weight map; fill a missing classifier head from `cfg.head_seed`.

    Two passes over the map. The first checks every name and shape without reading a tensor,
    so a bad checkpoint fails before any work. The second reads the tensors one at a time,
    each checked for NaN/inf, cast to `dtype` and placed on the default device before the
    next is read: host memory holds the params plus one tensor, never a second copy of the
    checkpoint (docs/families.md, "Loading large checkpoints")."""
    dtype = jnp.dtype(dtype)
    fam = get_family(cfg.family)
    t = canonical(tensors, _PREFIXES)
    dry = Taker(t, source, place=None)
    fam.params_from_hf(cfg, t, dry)
    dry.check()
    params = fam.params_from_hf(cfg, t, Taker(t, source, place=_placer(dtype, source)))
    # leaves a family derives from taken tensors (e.g. BERT's q|k|v concatenation) are placed here
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)
    if cfg.head == "classifier":
        fresh = init_head(cfg, jax.random.PRNGKey(cfg.head_seed), dtype)
        params["head"] = {k: params["head"].get(k, fresh[k]) for k in ("dense", "out")}
    return params


def load_config(directory: Path, **overrides) -> ModelConfig:
    cfg_path = Path(directory) / "config.json"
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from e
    try:
        return ModelConfig.from_hf_config(raw, name=str(directory), **overrides)
    except UnsupportedModelError as e:
        raise CheckpointError(f"{cfg_path}: {e}") from e
    except KeyError as e:
        raise CheckpointError(f"{cfg_path}: missing field {e}") from e


def load(name_or_path: str | os.PathLike = DEFAULT_MODEL, dtype="float32", *, head: Optional[str] = None,
         num_labels: Optional[int] = None, head_seed: int = 0, tokenizer: bool = True) -> Loaded:
    """Load config, params and (optionally) tokenizer.

    `head`: the family's default when None ("classifier" for BERT/RoBERTa, "lm" for
    GPT-2), or "none". A classifier head absent from the checkpoint is initialised
    from `head_seed`.
    """
    dtype = as_dtype(dtype)
    d = resolve(name_or_path)
    cfg = load_config(d, head=head, num_labels=num_labels).replace(head_seed=head_seed)
    if str(name_or_path) in DEFAULT_ALIASES:
        cfg = cfg.replace(name=DEFAULT_MODEL)
    tensors, src = read_weights(d)
    params = params_from_tensors(cfg, tensors, dtype, source=str(src))
    tok = load_tokenizer(d) if tokenizer else None
    return Loaded(cfg, params, d, tok)


