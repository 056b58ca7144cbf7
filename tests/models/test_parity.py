"""Parity of ntkfuse's functional forward with the Hugging Face PyTorch models.

Float32 tolerance: relative error ‖ours − hf‖ / ‖hf‖ < 1e-4 for the logits and for
every hidden state, over non-padding positions only (padding rows are don't-care in
both implementations). Float32 round-off through a few layers gives ~1e-6, so 1e-4
leaves room for a different summation order while still catching subtle mapping errors:
on MiniLM, tanh-GELU instead of erf-GELU, or LayerNorm eps 1e-5 instead of 1e-12, each
moves the hidden states by ~1e-3 relative; a wrong transpose or position id by far more.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkfuse
from tests.conftest import FORMATS, random_batch

torch = pytest.importorskip("torch")

TOL = 1e-4
# bfloat16 keeps 8 significant bits (unit round-off 2^-9 ≈ 2e-3). Rounding every weight
# and activation through 2-6 layers gives relative errors of 5e-3 (logits) to 1e-2
# (MiniLM's last hidden state) here; 3e-2 leaves 3x margin and is still far below the
# O(1e-1..1) error of a broken bf16 path (LayerNorm statistics in bf16, a mis-cast mask).
BF16_TOL = 3e-2


def run(cfg, params, batch):
    """Jitted forward with collect=True; provenance (cfg.name) dropped so that checkpoints of one
    shape in different formats share one compilation."""
    return ntkfuse.jit_forward(cfg.replace(name=""), params, {k: jnp.asarray(v) for k, v in batch.items()}, True)


def rel_err(ours, ref, mask=None) -> float:
    """‖ours − ref‖ / ‖ref‖, over positions where mask == 1 for (B, T, ...) arrays."""
    a, b = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    if mask is not None:
        keep = np.asarray(mask).astype(bool)
        a, b = a[keep], b[keep]
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def hf_forward(model, batch, mlp_modules=None):
    """HF outputs as numpy: logits (or None), hidden states, and optionally each layer's
    MLP input/output captured with forward hooks on `mlp_modules` = [(in_module, out_module)]."""
    mins, mouts, handles = [], [], []
    for m_in, m_out in mlp_modules or ():
        handles.append(m_in.register_forward_pre_hook(lambda mod, args: mins.append(args[0].detach().numpy())))
        handles.append(m_out.register_forward_hook(lambda mod, args, out: mouts.append(out.detach().numpy())))
    try:
        with torch.no_grad():
            out = model(**{k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    logits = getattr(out, "logits", None)
    return {"logits": None if logits is None else logits.numpy(),
            "hidden_states": [h.numpy() for h in out.hidden_states], "mlp_inputs": mins, "mlp_outputs": mouts}


def bert_mlp_modules(encoder):
    return [(layer.intermediate, layer.output.dense) for layer in encoder.layer]


def gpt2_mlp_modules(transformer):
    return [(block.mlp, block.mlp) for block in transformer.h]


def assert_parity(out, ref, mask, name, lm=False):
    """Every hidden state and the logits within TOL; returns the largest error seen."""
    assert len(out.hidden_states) == len(ref["hidden_states"])
    errs = [rel_err(a, b, mask) for a, b in zip(out.hidden_states, ref["hidden_states"])]
    if ref["logits"] is not None:
        errs.append(rel_err(out.logits, ref["logits"], mask if lm else None))
    worst = max(errs)
    print(f"\n[parity] {name}: max relative error {worst:.2e} (per output: {', '.join(f'{e:.1e}' for e in errs)})")
    assert worst < TOL, f"{name}: relative errors {errs}"
    return worst


# --------------------------------------------------------------------------- real MiniLM


@pytest.fixture(scope="module")
def minilm_batch(minilm):
    """Sentence pairs of different lengths: padding and token_type_ids = 1 both occur."""
    loaded, _ = minilm
    enc = loaded.tokenizer(["A cat sat on the mat.", "Short.", "JAX compiles numpy programs for accelerators."],
                           ["It was warm.", "A somewhat longer second segment of text here.", "Yes."],
                           padding="longest", return_tensors="np")
    batch = {k: np.asarray(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
    assert (batch["attention_mask"] == 0).any() and (batch["token_type_ids"] == 1).any()
    return batch


@pytest.fixture(scope="module")
def minilm_out(minilm, minilm_batch):
    """ntkfuse float32 eager output (classifier head, collect=True), shared by several tests."""
    loaded, _ = minilm
    return run(loaded.cfg, loaded.params, minilm_batch)


def test_minilm_bert_model_parity(minilm, minilm_batch, minilm_out):
    loaded, ref_model = minilm
    out = minilm_out._replace(logits=None)
    ref = hf_forward(ref_model, minilm_batch)
    assert_parity(out, ref, minilm_batch["attention_mask"], "MiniLM BertModel")


def test_minilm_classifier_parity(minilm, minilm_dir, minilm_batch, minilm_out):
    """BertForSequenceClassification from the same dir: the pooler comes from the checkpoint,
    the classifier (absent there) is ntkfuse's seeded one, copied into the torch model."""
    import transformers
    loaded, _ = minilm
    cfg, params = loaded.cfg, loaded.params
    ref_model = transformers.BertForSequenceClassification.from_pretrained(
        str(minilm_dir), num_labels=cfg.num_labels, attn_implementation="eager").eval()
    np.testing.assert_array_equal(np.asarray(params["head"]["dense"]["w"]),
                                  ref_model.bert.pooler.dense.weight.detach().numpy())
    with torch.no_grad():
        ref_model.classifier.weight.copy_(torch.from_numpy(np.array(params["head"]["out"]["w"])))
        ref_model.classifier.bias.copy_(torch.from_numpy(np.array(params["head"]["out"]["b"])))
    ref = hf_forward(ref_model, minilm_batch)
    assert_parity(minilm_out, ref, minilm_batch["attention_mask"], "MiniLM BertForSequenceClassification")
    # The seeded head is deterministic and seed-dependent.
    again = ntkfuse.load("minilm", tokenizer=False)
    np.testing.assert_array_equal(np.asarray(again.params["head"]["out"]["w"]), np.asarray(params["head"]["out"]["w"]))
    other = ntkfuse.load("minilm", tokenizer=False, head_seed=1)
    assert not np.allclose(np.asarray(other.params["head"]["out"]["w"]), np.asarray(params["head"]["out"]["w"]))


# --------------------------------------------------------------------------- tiny checkpoints, every format


def _roberta_batch():
    # Position ids must skip padding (HF create_position_ids_from_input_ids); keep BOS/EOS ids out.
    return random_batch(np.random.default_rng(0), [9, 4, 6], vocab=100, pad_id=1, avoid=(0, 2))


def _gpt2_batch():
    return random_batch(np.random.default_rng(1), [8, 3, 5], vocab=100, pad_id=0)


def _bert_batch():
    return random_batch(np.random.default_rng(2), [10, 5, 7], vocab=100, pad_id=0, token_types=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_tiny_roberta_parity(tiny_roberta, fmt):
    batch = _roberta_batch()
    loaded = ntkfuse.load(tiny_roberta.dirs[fmt], tokenizer=False)
    assert loaded.cfg.family == "roberta" and loaded.cfg.num_labels == 3
    out = run(loaded.cfg, loaded.params, batch)
    assert_parity(out, hf_forward(tiny_roberta.model, batch), batch["attention_mask"], f"tiny RoBERTa [{fmt}]")


@pytest.mark.parametrize("fmt", FORMATS)
def test_tiny_gpt2_parity(tiny_gpt2, fmt):
    batch = _gpt2_batch()
    loaded = ntkfuse.load(tiny_gpt2.dirs[fmt], tokenizer=False)
    assert loaded.cfg.family == "gpt2" and loaded.cfg.head == "lm"
    out = run(loaded.cfg, loaded.params, batch)
    assert_parity(out, hf_forward(tiny_gpt2.model, batch), batch["attention_mask"], f"tiny GPT-2 [{fmt}]", lm=True)


@pytest.mark.parametrize("fmt", ["safetensors", "flax"])
def test_tiny_bert_token_types_parity(tiny_bert, fmt):
    batch = _bert_batch()
    loaded = ntkfuse.load(tiny_bert.dirs[fmt], tokenizer=False)
    out = run(loaded.cfg, loaded.params, batch)
    assert_parity(out, hf_forward(tiny_bert.model, batch), batch["attention_mask"], f"tiny BERT [{fmt}]")
    # token_type_ids matter: dropping them changes the result.
    no_tt = {**batch, "token_type_ids": np.zeros_like(batch["token_type_ids"])}
    assert rel_err(run(loaded.cfg, loaded.params, no_tt).logits, out.logits) > 1e-3


@pytest.mark.parametrize("family", ["roberta", "gpt2"])
def test_every_format_gives_identical_params(tiny_roberta, tiny_gpt2, family):
    ck = {"roberta": tiny_roberta, "gpt2": tiny_gpt2}[family]
    base = ntkfuse.load(ck.dirs["safetensors"], tokenizer=False).params
    for fmt in FORMATS[1:]:
        other = ntkfuse.load(ck.dirs[fmt], tokenizer=False).params
        assert jax.tree_util.tree_structure(other) == jax.tree_util.tree_structure(base)
        for a, b in zip(jax.tree_util.tree_leaves(other), jax.tree_util.tree_leaves(base)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=fmt)


def test_roberta_padding_does_not_change_real_tokens(tiny_roberta):
    """Extra right padding leaves every real position unchanged (position ids skip padding)."""
    loaded = ntkfuse.load(tiny_roberta.dir, tokenizer=False)
    batch = _roberta_batch()
    wider = {k: np.pad(v, ((0, 0), (0, 5)), constant_values=1 if k == "input_ids" else 0) for k, v in batch.items()}
    a = run(loaded.cfg, loaded.params, batch)
    b = run(loaded.cfg, loaded.params, wider)
    np.testing.assert_allclose(np.asarray(b.logits), np.asarray(a.logits), rtol=1e-5, atol=1e-6)
    keep = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(b.last_hidden)[:, :batch["input_ids"].shape[1]][keep],
                               np.asarray(a.last_hidden)[keep], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- collect=True MLP inputs / outputs


def test_collect_mlp_io_matches_hf_roberta(tiny_roberta):
    batch = _roberta_batch()
    loaded = ntkfuse.load(tiny_roberta.dir, tokenizer=False)
    out = run(loaded.cfg, loaded.params, batch)
    ref = hf_forward(tiny_roberta.model, batch, bert_mlp_modules(tiny_roberta.model.roberta.encoder))
    _assert_mlp_io(out, ref, batch["attention_mask"], loaded.cfg.num_layers, "RoBERTa")


def test_collect_mlp_io_matches_hf_gpt2(tiny_gpt2):
    batch = _gpt2_batch()
    loaded = ntkfuse.load(tiny_gpt2.dir, tokenizer=False)
    out = run(loaded.cfg, loaded.params, batch)
    ref = hf_forward(tiny_gpt2.model, batch, gpt2_mlp_modules(tiny_gpt2.model.transformer))
    _assert_mlp_io(out, ref, batch["attention_mask"], loaded.cfg.num_layers, "GPT-2")


def test_collect_mlp_io_matches_hf_minilm(minilm, minilm_batch, minilm_out):
    loaded, ref_model = minilm
    out = minilm_out
    ref = hf_forward(ref_model, minilm_batch, bert_mlp_modules(ref_model.encoder))
    _assert_mlp_io(out, ref, minilm_batch["attention_mask"], loaded.cfg.num_layers, "MiniLM")


def _assert_mlp_io(out, ref, mask, num_layers, name):
    assert len(out.mlp_inputs) == len(out.mlp_outputs) == len(ref["mlp_inputs"]) == num_layers
    errs = [rel_err(a, b, mask) for a, b in zip(out.mlp_inputs + out.mlp_outputs,
                                                ref["mlp_inputs"] + ref["mlp_outputs"])]
    print(f"\n[parity] {name} MLP inputs/outputs: max relative error {max(errs):.2e}")
    assert max(errs) < TOL, errs


# --------------------------------------------------------------------------- family × layer stack × jit

_TINY = {"bert": (_bert_batch, lambda m: bert_mlp_modules(m.bert.encoder)),
         "roberta": (_roberta_batch, lambda m: bert_mlp_modules(m.roberta.encoder)),
         "gpt2": (_gpt2_batch, lambda m: gpt2_mlp_modules(m.transformer))}


@pytest.mark.parametrize("family", list(_TINY))
@pytest.mark.parametrize("stack", ["list", "scan"])
@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_tiny_parity_every_stack(request, family, stack, jit):
    """Logits, every hidden state and every MLP input/output match HF, whichever way the
    layers run (Python list or lax.scan), jitted or eager."""
    ck = request.getfixturevalue(f"tiny_{family}")
    make_batch, mlp_modules = _TINY[family]
    batch = make_batch()
    loaded = ntkfuse.load(ck.dir, tokenizer=False)
    cfg = loaded.cfg.replace(scan_layers=stack == "scan")
    out = run(cfg, loaded.params, batch) if jit else ntkfuse.forward(cfg, loaded.params, batch, collect=True)
    ref = hf_forward(ck.model, batch, mlp_modules(ck.model))
    name = f"tiny {family} [{stack}, {'jit' if jit else 'eager'}]"
    assert_parity(out, ref, batch["attention_mask"], name, lm=family == "gpt2")
    _assert_mlp_io(out, ref, batch["attention_mask"], cfg.num_layers, name)


def test_minilm_scan_parity(minilm, minilm_batch, minilm_out):
    """MiniLM's six identical layers as one lax.scan: HF parity, and the list forward's numbers."""
    loaded, ref_model = minilm
    out = run(loaded.cfg.replace(scan_layers=True), loaded.params, minilm_batch)
    ref = hf_forward(ref_model, minilm_batch, bert_mlp_modules(ref_model.encoder))
    assert_parity(out._replace(logits=None), ref, minilm_batch["attention_mask"], "MiniLM scan")
    _assert_mlp_io(out, ref, minilm_batch["attention_mask"], loaded.cfg.num_layers, "MiniLM scan")
    for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(minilm_out), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- jit and bfloat16


@pytest.mark.parametrize("family", ["roberta", "gpt2"])
def test_jit_forward_matches_eager_and_hf(tiny_roberta, tiny_gpt2, family):
    ck, batch = {"roberta": (tiny_roberta, _roberta_batch()), "gpt2": (tiny_gpt2, _gpt2_batch())}[family]
    loaded = ntkfuse.load(ck.dir, tokenizer=False)
    jitted = run(loaded.cfg, loaded.params, batch)
    eager = ntkfuse.forward(loaded.cfg, loaded.params, batch, collect=True)
    assert isinstance(jitted.logits, jax.Array)
    for a, b in zip(jax.tree_util.tree_leaves(jitted), jax.tree_util.tree_leaves(eager)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    assert_parity(jitted, hf_forward(ck.model, batch), batch["attention_mask"], f"jit {family}",
                  lm=family == "gpt2")


def test_bfloat16_minilm_close_to_float32(minilm_batch, minilm_out):
    bf = ntkfuse.load("minilm", dtype="bfloat16", tokenizer=False)
    out16 = run(bf.cfg, bf.params, minilm_batch)
    out32 = minilm_out
    assert out16.logits.dtype == jnp.bfloat16 and out16.last_hidden.dtype == jnp.bfloat16
    assert np.isfinite(np.asarray(out16.logits, np.float32)).all()
    e_logits = rel_err(np.asarray(out16.logits, np.float32), out32.logits)
    e_hidden = rel_err(np.asarray(out16.last_hidden, np.float32), out32.last_hidden, minilm_batch["attention_mask"])
    print(f"\n[bf16] MiniLM: logits rel err {e_logits:.2e}, last hidden rel err {e_hidden:.2e}")
    assert e_logits < BF16_TOL and e_hidden < BF16_TOL


def test_bfloat16_gpt2_close_to_float32(tiny_gpt2):
    batch = _gpt2_batch()
    f32 = ntkfuse.load(tiny_gpt2.dir, tokenizer=False)
    bf = ntkfuse.load(tiny_gpt2.dir, dtype="bfloat16", tokenizer=False)
    out16 = run(bf.cfg, bf.params, batch)
    out32 = run(f32.cfg, f32.params, batch)
    assert out16.logits.dtype == jnp.bfloat16
    e = rel_err(np.asarray(out16.logits, np.float32), out32.logits, batch["attention_mask"])
    print(f"\n[bf16] tiny GPT-2: logits rel err {e:.2e}")
    assert e < BF16_TOL
