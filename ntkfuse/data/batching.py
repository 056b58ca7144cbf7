"""Examples -> model batches (numpy dicts as `ntkfuse.forward` takes them).

Encoders get the text (prompt and target joined when there is a target). Decoders
get prompt + target with a `target_mask` that is 1 exactly on the target's tokens,
so a target log-probability counts only the sentence, not the linearised triples.
An example without a target is scored as a whole (every token after the first).
Encoder-decoders get the prompt in the encoder and the target in the decoder
(`seq2seq_batch`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .readers import DataError, Example
from .tokenize import tokenize


def classification_batch(tok, examples: Sequence[Example], max_length: int) -> dict:
    """`ntkfuse.tokenize` of the texts (padded to the longest), as int32; examples with a
    second sentence (`text_pair`) are encoded as sentence pairs (all or none of them)."""
    texts = [e.text if e.target is None else f"{e.text} {e.target}" for e in examples]
    pairs = [e.text_pair for e in examples]
    if any(p is not None for p in pairs) and not all(p is not None for p in pairs):
        raise DataError("some examples have a second sentence (text_pair) and some do not")
    pairs = pairs if pairs and pairs[0] is not None else None
    return {k: np.asarray(v, np.int32) for k, v in tokenize(tok, texts, max_length, pairs=pairs).items()}


def lm_batch(tok, examples: Sequence[Example], max_length: int) -> dict:
    """Right-padded prompt+target ids with `target_mask` over target tokens.

    Too long: the prompt is cut from the left first (the target is what is scored),
    then the target from the right; every example keeps at least one target token.
    """
    if max_length < 2:
        raise DataError(f"max_length must be >= 2 for a language-model batch, got {max_length}")
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    rows, masks = [], []
    for e in examples:
        if e.target is None:
            ids = tok(e.text, add_special_tokens=False)["input_ids"][:max_length]
            prompt, target = ids[:1], ids[1:]
        else:
            prompt = tok(e.text, add_special_tokens=False)["input_ids"]
            target = tok(" " + e.target, add_special_tokens=False)["input_ids"]
        target = target[:max_length - 1]
        prompt = prompt[max(0, len(prompt) - (max_length - len(target))):]
        if not target:
            raise DataError(f"example {e.text[:40]!r} has no target tokens to score")
        rows.append(list(prompt) + list(target))
        masks.append([0] * len(prompt) + [1] * len(target))
    T = max(len(r) for r in rows)
    ids = np.full((len(rows), T), pad, np.int32)
    att = np.zeros((len(rows), T), np.int32)
    tm = np.zeros((len(rows), T), np.int32)
    for i, (r, m) in enumerate(zip(rows, masks)):
        ids[i, :len(r)], att[i, :len(r)], tm[i, :len(m)] = r, 1, m
    return {"input_ids": ids, "attention_mask": att, "target_mask": tm}


def seq2seq_batch(tok, examples: Sequence[Example], max_length: int, decoder_start_token_id: int) -> dict:
    """Encoder-decoder batch: the prompt (with the tokenizer's special tokens, T5's closing </s>)
    → `input_ids`/`attention_mask`; the decoder start token then the target (its special tokens
    too) → `decoder_input_ids`/`decoder_attention_mask`, with `target_mask` 1 on the target's tokens
    (HF's labels = the target, decoder inputs = labels shifted right: the same log-probabilities).
    Both sides right-padded; each cut to `max_length` from the right (the target keeps ≥ 1 token)."""
    if max_length < 2:
        raise DataError(f"max_length must be >= 2 for an encoder-decoder batch, got {max_length}")
    if any(e.target is None for e in examples):
        raise DataError("an encoder-decoder scores a target given a source: every example needs a target "
                        "(data-to-text data such as sample:webnlg)")
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    src = [list(tok(e.text)["input_ids"])[:max_length] for e in examples]
    tgt = [[decoder_start_token_id] + list(tok(e.target)["input_ids"])[:max_length - 1] for e in examples]
    if any(len(t) < 2 for t in tgt):
        raise DataError("an example's target has no tokens to score")

    def pack(rows):
        T = max(len(r) for r in rows)
        ids = np.full((len(rows), T), pad, np.int32)
        att = np.zeros((len(rows), T), np.int32)
        for i, r in enumerate(rows):
            ids[i, :len(r)], att[i, :len(r)] = r, 1
        return ids, att

    ids, att = pack(src)
    dids, datt = pack(tgt)
    tm = datt.copy()
    tm[:, 0] = 0      # the start token is not a target
    return {"input_ids": ids, "attention_mask": att, "decoder_input_ids": dids, "decoder_attention_mask": datt,
            "target_mask": tm}


def make_batch(cfg, tok, examples: Sequence[Example], max_length: int) -> dict:
    """The batch a model of config `cfg` needs: a seq2seq batch for encoder-decoders, an LM batch
    for decoders, else classification."""
    if not examples:
        raise DataError("no examples")
    if tok is None:
        raise DataError("the model has no tokenizer; a checkpoint directory needs tokenizer files")
    if cfg.is_encoder_decoder:
        return seq2seq_batch(tok, examples, max_length, cfg.decoder_start_token_id)
    if cfg.is_decoder:
        return lm_batch(tok, examples, max_length)
    return classification_batch(tok, examples, max_length)
