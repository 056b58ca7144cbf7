"""Texts -> a numpy batch with the checkpoint's own tokenizer."""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np


def tokenize(tok, texts: Iterable[str], max_length: int = 128, pad_to: Optional[int] = None,
             pairs: Optional[Iterable[str]] = None) -> dict:
    """Batch as numpy arrays: input_ids, attention_mask (and token_type_ids when the tokenizer makes them).
    `pairs`: second sentences, encoded as the tokenizer's sentence pairs (separator, segment ids)."""
    enc = tok(list(texts), None if pairs is None else list(pairs), padding="max_length" if pad_to else "longest",
              truncation=True, max_length=pad_to or max_length, return_tensors="np")
    return {k: np.asarray(v) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def tokenize_text(tok, text: str) -> np.ndarray:
    """One whole text -> a 1-D int32 array of token ids, no truncation, with the special
    tokens the tokenizer adds by default (Llama's BOS; none for GPT-2)."""
    enc = tok(text, truncation=False, return_attention_mask=False, verbose=False)
    return np.asarray(enc["input_ids"], np.int32).reshape(-1)
