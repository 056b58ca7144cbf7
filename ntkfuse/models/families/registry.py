"""The family registry: what a transformer family provides, and the lookup by name.

A family is one module (`bert.py`, `gpt2.py`) exporting `FAMILIES`, a tuple of `Family`
entries; adding a family means writing that module and naming it in `_MODULES` below.
Nothing outside the family modules tests `cfg.family`: it asks `get_family(cfg.family)`.
"""
from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Callable, Mapping


class UnsupportedModelError(ValueError):
    """The checkpoint's `model_type` (or a config's `family`) is not one ntkfuse implements."""


@dataclasses.dataclass(frozen=True)
class Family:
    """Everything the generic code needs to know about one architecture family.

    config_from_hf(d, *, head, num_labels, name) -> dict of `ModelConfig` fields, from an
        HF `config.json` dict whose `model_type` is in `model_types`.
    init(cfg, key, dtype) -> params (HF-style N(0, 0.02) random weights).
    forward(cfg, params, batch, collect, rng) -> ModelOutput; dropout only when `rng` is a key.
    params_from_hf(cfg, tensors, take) -> params, from PyTorch-named tensors with the model
        prefix dropped (`hf_prefixes`), reading each one through `take(name, shape, transpose=False)`.
    reserved_positions(cfg) -> position-embedding rows a sequence cannot use (RoBERTa: pad id + 1).
    """

    name: str
    model_types: tuple
    config_from_hf: Callable
    init: Callable
    forward: Callable
    params_from_hf: Callable
    heads: tuple                          # heads the family implements, the default first
    default_data: str                     # data spec of ntk_compare when none is given
    default_output: str                   # scalar output of the NTK when none is given
    is_decoder: bool                      # causal LM batches (prompt + target) instead of classification
    token_types: bool                     # has token-type embeddings (batch check of token_type_ids)
    hf_prefixes: tuple = ()               # model prefixes of HF weight names ("bert.", "transformer.")
    reserved_positions: Callable = lambda cfg: 0
    # finetune.decode's KV-cache step implements this family's layer (GPT-2's pre-LN layer
    # with learned positions); a family with another layer needs its own cached step first
    cached_decoding: bool = False

    @property
    def default_head(self) -> str:
        return self.heads[0]


def _build(modules) -> Mapping[str, Family]:
    out = {}
    for m in modules:
        for fam in m.FAMILIES:
            if fam.name in out:
                raise RuntimeError(f"model family {fam.name!r} registered twice")
            out[fam.name] = fam
    return MappingProxyType(out)


from . import bert, gpt2, llama, mixtral, switch  # noqa: E402  (the family modules import `Family` from here)

_MODULES = (bert, gpt2, llama, mixtral, switch)
FAMILIES: Mapping[str, Family] = _build(_MODULES)
SUPPORTED_MODEL_TYPES = tuple(t for f in FAMILIES.values() for t in f.model_types)
_BY_MODEL_TYPE = MappingProxyType({t: f for f in FAMILIES.values() for t in f.model_types})


def get_family(name: str) -> Family:
    """The registered family `name`; an `UnsupportedModelError` naming the supported ones otherwise."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise UnsupportedModelError(
            f"unsupported model family {name!r}; supported: {', '.join(FAMILIES)}") from None


def family_for_model_type(model_type) -> Family:
    """The family that reads HF configs of `model_type`."""
    try:
        return _BY_MODEL_TYPE[model_type]
    except (KeyError, TypeError):
        raise UnsupportedModelError(f"unsupported model_type {model_type!r}; ntkfuse supports: "
                                    f"{', '.join(SUPPORTED_MODEL_TYPES)}") from None
