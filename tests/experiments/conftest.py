"""Fixtures of the driver tests: tiny random HF checkpoints with word-level tokenizers."""
from __future__ import annotations

from pathlib import Path

import pytest

from ntkfuse.data import load_examples

SPECIALS = {"roberta": ["<s>", "<pad>", "</s>", "<unk>"], "gpt2": ["<|endoftext|>", "<unk>"],
            "switch": ["<pad>", "</s>", "<unk>"]}


def _tokenizer(family: str, directory: Path) -> int:
    """A WordLevel tokenizer over the shipped samples' words, saved as PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = set()
    pre = pre_tokenizers.Whitespace()
    for spec in ("sample:sentiment", "sample:webnlg"):
        for e in load_examples(spec):
            for text in (e.text, e.target or ""):
                words.update(w for w, _ in pre.pre_tokenize_str(text.lower()))
    vocab = {t: i for i, t in enumerate(SPECIALS[family] + sorted(words))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre
    if family == "roberta":
        kw = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    elif family == "switch":
        kw = dict(eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    else:
        kw = dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<unk>")
    PreTrainedTokenizerFast(tokenizer_object=tk, **kw).save_pretrained(directory)
    return len(vocab)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny RobertaForSequenceClassification and GPT2LMHeadModel (3 layers, d=32, D=64) with tokenizers."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny_compare")
    out = {}
    for family in ("roberta", "gpt2"):
        d = root / family
        d.mkdir()
        V = _tokenizer(family, d)
        if family == "roberta":
            cfg = transformers.RobertaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                             num_attention_heads=4, max_position_embeddings=64, type_vocab_size=1,
                                             num_labels=2, pad_token_id=1, bos_token_id=0, eos_token_id=2)
            model = transformers.RobertaForSequenceClassification(cfg)
        else:
            cfg = transformers.GPT2Config(vocab_size=V, n_embd=32, n_layer=3, n_head=4, n_positions=64,
                                          bos_token_id=0, eos_token_id=0)
            model = transformers.GPT2LMHeadModel(cfg)
        model.save_pretrained(d)
        out[family] = d
    return out
