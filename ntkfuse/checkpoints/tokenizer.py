"""A checkpoint's own tokenizer, through transformers' tokenizer classes (no model classes).

`transformers.AutoTokenizer` imports transformers' configuration module, which imports torch:
1-2 s per process with Python's bytecode cache and 10 s or more without it (the GPU machines'
shells set PYTHONDONTWRITEBYTECODE), spent on a library ntkfuse never calls. Where the class that
AutoTokenizer would pick is unambiguous, `load_tokenizer` imports that class alone and calls its
`from_pretrained`, exactly as AutoTokenizer ends up doing; everything else goes through
AutoTokenizer. The decision follows AutoTokenizer's (transformers 5):

- the class the checkpoint declares (`tokenizer_class` in tokenizer_config.json or config.json),
  or with none declared, the class transformers registers for the config's `model_type`;
- a declared class equal to the registered one (up to a "Fast" suffix) is used;
- a declared generic fast tokenizer (`PreTrainedTokenizerFast` / `TokenizersBackend`, as
  `save_pretrained` of a bare `tokenizers` object writes) loads as `TokenizersBackend`;
- remote code (`auto_map`), model types outside `REGISTERED`, or any other declared class:
  AutoTokenizer. (AutoTokenizer also sends a few hub ids to `TokenizersBackend` by the
  config's name or path; a local directory's path is not one of them.)

`REGISTERED` copies transformers' own registry for ntkfuse's families whose entry is a specific
class; a test checks it against `TOKENIZER_MAPPING_NAMES`, and that both paths give the same
tokenizer class and the same encodings.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .errors import CheckpointError

# model_type → the tokenizer class transformers registers for it. Not here, so through AutoTokenizer:
# llama, mistral, mixtral (registered as none or a generic backend, resolved by further rules) and
# qwen2 (listed by transformers as declaring a wrong class on the hub: its registered class wins).
REGISTERED = {"bert": "BertTokenizer", "roberta": "RobertaTokenizer", "gpt2": "GPT2Tokenizer",
              "switch_transformers": "T5Tokenizer"}
GENERIC = ("PreTrainedTokenizerFast", "TokenizersBackend")


def _json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def direct_class_name(directory: Path) -> Optional[str]:
    """The transformers class AutoTokenizer would load `directory` with, when that is unambiguous
    (see the module docstring); None: leave it to AutoTokenizer."""
    directory = Path(directory)
    tok_cfg, cfg = _json(directory / "tokenizer_config.json"), _json(directory / "config.json")
    registered = REGISTERED.get(cfg.get("model_type"))
    if registered is None or "auto_map" in tok_cfg or "auto_map" in cfg:
        return None
    declared = tok_cfg.get("tokenizer_class") or cfg.get("tokenizer_class")
    if declared is None or (isinstance(declared, str) and declared.removesuffix("Fast") == registered):
        return registered
    if declared in GENERIC:
        return "TokenizersBackend"
    return None


def load_tokenizer(directory: Path):
    """The checkpoint's own tokenizer (GPT-2-style tokenizers without a pad token get pad = eos)."""
    name = direct_class_name(directory)
    try:
        if name is not None:
            import transformers   # lazy: importing one tokenizer class does not import torch
            tok = getattr(transformers, name).from_pretrained(str(directory))
        else:
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(str(directory))
    except Exception as e:
        raise CheckpointError(f"{directory}: cannot load a tokenizer ({type(e).__name__}: {e})") from e
    if tok.pad_token is None and tok.eos_token is not None:  # GPT-2 has no pad token
        tok.pad_token = tok.eos_token
    return tok


__all__ = ["REGISTERED", "direct_class_name", "load_tokenizer"]
