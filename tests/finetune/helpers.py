"""Tiny models, a word tokenizer and synthetic tasks for the fine-tuning tests."""
from __future__ import annotations

import zlib

import jax
import numpy as np

from ntkfuse.data import Example
from ntkfuse.models import ModelConfig, init_params

VOCAB = 64
# The words of the synthetic tasks get distinct ids (no hash collisions); others hash.
WORDS = ("the", "a", "film", "day", "was", "very", "quite", "food", "so", "good", "bad", "is", "related", "to", "r",
         "|", "=", ".")


class WordTok:
    """Whitespace tokenizer with HF's call conventions (single texts for lm_batch; batches
    with optional pairs, padding and truncation for encoders). Ids: 4 + the index in WORDS,
    else 4 + len(WORDS) + crc32(word) mod the rest."""
    pad_token_id, eos_token_id, cls_id, sep_id = 0, 1, 2, 3

    def _ids(self, text):
        n = 4 + len(WORDS)
        return [4 + WORDS.index(w) if w in WORDS else n + zlib.crc32(w.encode()) % (VOCAB - n) for w in text.split()]

    def __call__(self, text, text_pair=None, add_special_tokens=True, padding=False, truncation=False,
                 max_length=None, return_tensors=None):
        if isinstance(text, str):
            return {"input_ids": self._ids(text)}
        rows, types = [], []
        for i, t in enumerate(text):
            a = [self.cls_id] + self._ids(t) + [self.sep_id]
            b = self._ids(text_pair[i]) + [self.sep_id] if text_pair is not None else []
            r, tt = (a + b)[:max_length], ([0] * len(a) + [1] * len(b))[:max_length]
            rows.append(r)
            types.append(tt)
        T = max_length if padding == "max_length" else max(map(len, rows))
        ids = np.zeros((len(rows), T), np.int64)
        att, tts = np.zeros_like(ids), np.zeros_like(ids)
        for i, (r, tt) in enumerate(zip(rows, types)):
            ids[i, :len(r)], att[i, :len(r)], tts[i, :len(tt)] = r, 1, tt
        return {"input_ids": ids, "attention_mask": att, "token_type_ids": tts}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"w{i}" for i in ids if i > 3)


def tiny(family="bert", num_labels=2, seed=0):
    head = "lm" if family == "gpt2" else "classifier"
    cfg = ModelConfig(family=family, vocab_size=VOCAB, hidden=16, intermediate=32, num_layers=2, num_heads=2,
                      max_positions=32, num_labels=num_labels, head=head,
                      layer_norm_eps=1e-5, type_vocab_size=0 if family == "gpt2" else 2)
    return cfg, init_params(cfg, jax.random.PRNGKey(seed))


def sentiment(n=24, seed=0):
    """'good'/'bad' sentences: the label is in the words, so a few epochs learn it."""
    rng = np.random.default_rng(seed)
    fill = ["the", "a", "film", "day", "was", "very", "quite", "food", "so"]
    out = []
    for i in range(n):
        y = int(i % 2)
        words = list(rng.choice(fill, 4)) + ["good" if y else "bad"]
        rng.shuffle(words)
        out.append(Example(" ".join(words), y))
    return out


def webnlg(n=8):
    return [Example(f"e{i} | r | o{i} =", None, f"e{i} is related to o{i} .") for i in range(n)]
