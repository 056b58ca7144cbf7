"""Loading Hugging Face checkpoints into ntkfuse's params layout.

`load(name_or_path)` resolves the checkpoint (`hub.py`), reads `config.json` into a
`ModelConfig` (the family registered for its `model_type` reads it), reads the weights
(`formats.py`) and maps them through the family's HF weight-name map. Every problem is
a `CheckpointError` naming the file and what is wrong, before any array is converted:
unsupported model type, missing or mis-shaped weights, NaN/inf.
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
from .formats import read_weights
from .hub import DEFAULT_ALIASES, DEFAULT_MODEL, resolve
from .mapping import Taker, canonical


class Loaded(NamedTuple):
    cfg: ModelConfig
    params: dict
    path: Path
    tokenizer: Any = None


# Model prefixes of HF weight names, of every family (a checkpoint of one family never
# carries another's), and the generic "model.".
_PREFIXES = tuple(p for f in FAMILIES.values() for p in f.hf_prefixes) + ("model.",)


def params_from_tensors(cfg: ModelConfig, tensors: dict[str, np.ndarray], dtype=jnp.float32,
                        source: str = "checkpoint") -> dict:
    """Map PyTorch-named tensors onto ntkfuse's params tree through the family's weight
    map; fill a missing classifier head from `cfg.head_seed`."""
    t = canonical(tensors, _PREFIXES)
    take = Taker(t, source)
    params = get_family(cfg.family).params_from_hf(cfg, t, take)
    take.check()
    for leaf in jax.tree_util.tree_leaves(params):
        if np.issubdtype(leaf.dtype, np.floating) or leaf.dtype == ml_dtypes.bfloat16:
            if not np.isfinite(np.asarray(leaf, np.float32)).all():
                raise CheckpointError(f"{source}: weights contain NaN or inf")
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


def load_tokenizer(directory: Path):
    """The checkpoint's own tokenizer through transformers (tokenizers only, no model classes)."""
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(str(directory))
    except Exception as e:
        raise CheckpointError(f"{directory}: cannot load a tokenizer ({type(e).__name__}: {e})") from e
    if tok.pad_token is None and tok.eos_token is not None:  # GPT-2 has no pad token
        tok.pad_token = tok.eos_token
    return tok
