"""Perplexity of a decoder LM on one long token sequence, with the standard sliding window.

The text is tokenized once into ids x_0 .. x_{n-1}. Windows of `max_length` tokens start at
0, stride, 2·stride, ... (the last one ends at n, possibly shorter) until one reaches the end.
Each window scores only the tokens the previous window did not score: window [b, e) scores
x_t for max(prev_e, b + 1) <= t < e, by -log p(x_t | x_b .. x_{t-1}). Every token is thus
scored once, in the first window that holds it, with at least max_length - stride tokens of
context (except early on); x_0 has no context and is never scored. With stride == max_length
the windows are disjoint and each window's first token goes unscored as well (it has no
context inside its window), as in Hugging Face's perplexity guide.

    perplexity = exp(total NLL / total scored tokens)

token-weighted over the whole text, not a mean of per-window perplexities. Windows run
through one jitted forward, `batch_size` at a time (the last window and the last batch padded;
padding is never scored), with float32 log-softmax whatever the params' dtype.

An encoder-decoder (Switch Transformers, T5-style) has no running-text distribution of its
own; it gets the prefix-conditioned analogue with the same windows and the same scored
tokens: window [b, e) that scores [first, e) gives the encoder the context x_b .. x_{first-1}
and the decoder the targets x_first .. x_{e-1}, teacher-forced from the decoder start token,
scoring -log p(x_t | encoder(x_b .. x_{first-1}), x_first .. x_{t-1}); the decoder reads
[decoder_start_token_id, x_first .. x_{e-2}]. The first window's context is x_0 alone, so the
encoder always reads real text. The scored tokens are the decoder path's: every token but x_0
once for stride < max_length (each later context then holds max_length - stride tokens), and
with stride == max_length each window's first token is its one-token context, unscored. This is
not comparable with a decoder-only perplexity, and checkpoints pre-trained on span corruption
(T5, Switch) give high values on plain text.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .. import validate
from ..models import FAMILIES, ModelConfig, forward, get_family


class PerplexityError(ValueError):
    """Bad perplexity input (model, window settings or text)."""


class Window(NamedTuple):
    """Tokens [begin, end) of the text; it scores tokens [first, end)."""
    begin: int
    end: int
    first: int

    @property
    def scored(self) -> int:
        return self.end - self.first


def windows(n_tokens: int, max_length: int, stride: int) -> list[Window]:
    """The sliding windows over `n_tokens` tokens (module docstring); settings unchecked."""
    out, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        out.append(Window(begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == n_tokens:
            break
    return out


def check_settings(cfg: Optional[ModelConfig] = None, max_length: Optional[int] = None,
                   stride: Optional[int] = None, batch_size: int = 1) -> tuple:
    """(max_length, stride) after the checks; defaults max_length = min(1024, the model's
    positions) and stride = max_length // 2 (at least 1). Without `cfg` only what needs no
    model is checked (positivity, stride <= max_length when both are given)."""
    e = PerplexityError
    validate.check_positive("batch_size", batch_size, integer=True, error=e)
    if cfg is not None:
        fam = get_family(cfg.family)
        if not fam.is_decoder and not cfg.is_encoder_decoder:
            raise e(f"perplexity needs a decoder language model; {cfg.name or 'the model'} is a "
                    f"{cfg.family} encoder (decoder families: "
                    f"{', '.join(n for n, f in FAMILIES.items() if f.is_decoder)}; or an encoder-decoder)")
        if cfg.head != "lm":
            raise e(f"perplexity needs the LM head (head='lm'), the model has head={cfg.head!r}")
    if max_length is not None:
        validate.check_positive("max_length", max_length, integer=True, error=e)
        if max_length < 2:
            raise e(f"max_length must be at least 2 (a window scores tokens after its first), got {max_length}")
    if cfg is not None:
        limit = cfg.max_positions - get_family(cfg.family).reserved_positions(cfg)
        if max_length is None:
            max_length = min(1024, limit)
        elif max_length > limit:
            raise e(f"max_length {max_length} exceeds the model's {limit} positions")
    if stride is not None:
        validate.check_positive("stride", stride, integer=True, error=e)
        if max_length is not None and stride > max_length:
            raise e(f"stride {stride} exceeds max_length {max_length}: tokens between windows would go unscored")
    elif max_length is not None:
        stride = max(1, max_length // 2)
    return max_length, stride


@dataclasses.dataclass(frozen=True)
class PerplexityResult:
    """Total NLL (nats) over `tokens` scored tokens; per-window sums and counts in window order."""
    nll: float
    tokens: int
    n_tokens: int                  # length of the text in tokens
    max_length: int
    stride: int
    window_nll: np.ndarray
    window_tokens: np.ndarray

    @property
    def windows(self) -> int:
        return len(self.window_tokens)

    @property
    def mean_nll(self) -> float:
        """NLL per scored token (nats); its exp is the perplexity, its value / ln 2 bits per token."""
        return self.nll / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)

    def to_dict(self) -> dict:
        return {"perplexity": self.perplexity, "nll": self.nll, "mean_nll": self.mean_nll, "tokens": self.tokens,
                "n_tokens": self.n_tokens, "windows": self.windows, "max_length": self.max_length,
                "stride": self.stride}


@functools.partial(jax.jit, static_argnums=0)
def _window_sums(cfg: ModelConfig, params, ids, mask, score):
    """Per window: (sum of -log p(x_t | x_<t) over scored t, number of scored t)."""
    logits = forward(cfg, params, {"input_ids": ids, "attention_mask": mask}).logits
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    lp = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    w = score[:, 1:]
    return -jnp.where(w, lp, 0.0).sum(-1), w.sum(-1)


@functools.partial(jax.jit, static_argnums=0)
def _window_sums_seq2seq(cfg: ModelConfig, params, src, src_mask, dec_in, dec_mask, targets, score):
    """Per window of an encoder-decoder: (sum of -log p(target_t | context, targets_<t) over scored t,
    number of scored t)."""
    logits = forward(cfg, params, {"input_ids": src, "attention_mask": src_mask, "decoder_input_ids": dec_in,
                                   "decoder_attention_mask": dec_mask}).logits
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    lp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return -jnp.where(score, lp, 0.0).sum(-1), score.sum(-1)


def _decoder_arrays(ids, wins, rows: int, T: int) -> tuple:
    """Each window's tokens, mask and scored positions, padded to T tokens (one shape for every
    window: one compilation); rows past the windows (filling the last batch) score nothing."""
    all_ids = np.zeros((rows, T), np.int32)
    mask = np.ones((rows, T), np.int32)   # dummy rows: all ones, never scored
    score = np.zeros((rows, T), bool)
    for i, w in enumerate(wins):
        L = w.end - w.begin
        all_ids[i, :L] = ids[w.begin:w.end]
        mask[i, L:] = 0
        score[i, w.first - w.begin:L] = True
    return all_ids, mask, score


def _seq2seq_arrays(cfg: ModelConfig, ids, wins, rows: int) -> tuple:
    """Encoder inputs (each window's context), teacher-forced decoder inputs, targets and masks, one
    shape for every window; rows past the windows (filling the last batch) score nothing."""
    S = max(w.first - w.begin for w in wins)
    T = max(w.scored for w in wins)
    src = np.zeros((rows, S), np.int32)
    src_mask = np.ones((rows, S), np.int32)   # dummy rows attend to something: no empty softmax
    dec_in = np.full((rows, T), cfg.decoder_start_token_id, np.int32)
    dec_mask = np.ones((rows, T), np.int32)
    targets = np.zeros((rows, T), np.int32)
    score = np.zeros((rows, T), bool)
    for i, w in enumerate(wins):
        ctx, tgt = ids[w.begin:w.first], ids[w.first:w.end]
        src[i, :len(ctx)] = ctx
        src_mask[i, len(ctx):] = 0
        dec_in[i, 1:len(tgt)] = tgt[:-1]
        dec_mask[i, len(tgt):] = 0
        targets[i, :len(tgt)] = tgt
        score[i, :len(tgt)] = True
    return src, src_mask, dec_in, dec_mask, targets, score


def sliding_window_nll(cfg: ModelConfig, params: dict, ids, max_length: Optional[int] = None,
                       stride: Optional[int] = None, batch_size: int = 8, progress: bool = False,
                       desc: str = "perplexity") -> PerplexityResult:
    """Total NLL and scored-token count of the 1-D token sequence `ids` under the decoder
    (`cfg`, `params`) with sliding windows of `max_length` tokens advanced by `stride`
    (module docstring; defaults: `check_settings`). `.perplexity` of the result is
    exp(nll / tokens). `progress`: a tqdm bar over the windows.

    An encoder-decoder scores the same tokens conditioned on each window's context through its
    encoder (module docstring).

    Raises PerplexityError for an encoder or a model without LM head, stride < 1 or
    > max_length, max_length beyond the model's positions, ids that are not 1-D, fewer than
    2 tokens, or ids outside the vocabulary, all before any forward."""
    max_length, stride = check_settings(cfg, max_length, stride, batch_size)
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise PerplexityError(f"token ids must be one 1-D sequence (the whole text), got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise PerplexityError(f"token ids must be integers, got dtype {ids.dtype}")
    n = len(ids)
    if n < 2:
        raise PerplexityError(f"the text has {n} token{'' if n == 1 else 's'}; perplexity needs at least 2")
    if ids.min() < 0 or ids.max() >= cfg.vocab_size:
        bad = ids[(ids < 0) | (ids >= cfg.vocab_size)]
        raise PerplexityError(f"token ids outside the vocabulary [0, {cfg.vocab_size}): e.g. {bad[:5].tolist()}")
    wins = windows(n, max_length, stride)
    B = min(batch_size, len(wins))
    n_batches = -(-len(wins) // B)
    if cfg.is_encoder_decoder:
        arrays, step = _seq2seq_arrays(cfg, ids, wins, n_batches * B), _window_sums_seq2seq
    else:
        arrays, step = _decoder_arrays(ids, wins, n_batches * B, min(max_length, n)), _window_sums
    from tqdm.auto import tqdm
    bar = tqdm(total=len(wins), desc=desc, unit="window", disable=not progress, leave=False)
    sums, counts = [], []
    try:
        for j in range(n_batches):
            sl = slice(j * B, (j + 1) * B)
            s, c = step(cfg, params, *(jnp.asarray(a[sl]) for a in arrays))
            sums.append(np.asarray(s, np.float64))
            counts.append(np.asarray(c, np.int64))
            bar.update(min(B, len(wins) - j * B))
    finally:
        bar.close()
    sums = np.concatenate(sums)[:len(wins)]
    counts = np.concatenate(counts)[:len(wins)]
    expected = np.array([w.scored for w in wins])
    if not np.array_equal(counts, expected):      # pragma: no cover  (an internal invariant)
        raise AssertionError(f"scored counts {counts.tolist()} != windows' {expected.tolist()}")
    return PerplexityResult(float(sums.sum()), int(counts.sum()), n, max_length, stride, sums, counts)


__all__ = ["PerplexityError", "PerplexityResult", "Window", "windows", "check_settings", "sliding_window_nll"]
