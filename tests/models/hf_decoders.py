"""Shared by the decoder parity tests (Llama family, Mixtral): tiny random HF models saved
with save_pretrained per variant, a right-padded batch, and the HF torch outputs."""
from __future__ import annotations

import numpy as np


def save_variants(tmp_path_factory, variants, build) -> dict:
    """{name: (torch model, checkpoint dir)}: `build(name)` for each variant, saved as safetensors."""
    out = {}
    for name in variants:
        d = tmp_path_factory.mktemp(name)
        model = build(name)
        model.save_pretrained(d, safe_serialization=True)
        out[name] = (model, d)
    return out


def padded_batch(vocab: int = 50) -> dict:
    """3 × 12 token ids, rows 1 and 2 right-padded after 8 and 5 tokens (pad id 0)."""
    ids = np.random.default_rng(0).integers(3, vocab, (3, 12))
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    ids = np.where(mask == 1, ids, 0)
    return {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32)}


def hf_outputs(model, batch) -> tuple:
    """(logits, [every hidden state]) of the HF torch model as float32 numpy."""
    import torch
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()}, output_hidden_states=True)
    f = lambda t: t.float().numpy()  # noqa: E731
    return f(out.logits), [f(h) for h in out.hidden_states]


def save_tiny_decoder(d, config_cls, model_cls, base: dict, **extra):
    """A random HF decoder (`config_cls(**base, **extra)` with the gpt2 tokenizer's vocabulary and
    no pad token) saved with its tokenizer in the new directory `d`, as `ntk_compare` reads it."""
    import torch

    from tests.experiments.conftest import _tokenizer
    d.mkdir()
    V = _tokenizer("gpt2", d)
    torch.manual_seed(0)
    cfg = config_cls(**{**base, "vocab_size": V, "pad_token_id": None, "bos_token_id": 0, "eos_token_id": 0}, **extra)
    model_cls(cfg).save_pretrained(d)
    return d


def compare_methods(model_dir, tmp_path, capsys, methods=("fusion", "prune")) -> dict:
    """`ntk_compare` with `methods` on a tiny local checkpoint (4 examples × 16 tokens, width 8):
    its results.json after checking it ran, every method is there in order, the output is the
    target log-prob and each kernel error is finite and non-zero."""
    import json

    from ntkfuse.cli import compare_main
    out = tmp_path / "run"
    rc = compare_main(["--model", str(model_dir), "--methods", ",".join(methods), "--width", "8", "--n-examples", "4",
                       "--max-length", "16", "--n-init", "1", "--seeds", "0", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0, err
    res = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in res["results"]] == list(methods)
    assert res["config"]["output"] == "target-logprob"
    for r in res["results"]:
        assert np.isfinite(r["ntk_rel"]) and r["ntk_rel"] > 0
    return res
