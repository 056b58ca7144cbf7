"""ntkfuse.experiments.surrogates (scripts/fit_surrogates.py): one key per surrogate kind,
argument checks before any work, end to end on a tiny classifier with resume."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from ntkfuse.cli import fit_surrogates_main
from ntkfuse.compress import METHODS
from ntkfuse.experiments import surrogates as S

EVERY_KIND = ["linear", "linear_sgd", "low_rank_linear", "bottleneck-random"] + [f"bottleneck-{m}" for m in METHODS]


def _raw(key) -> tuple:
    return tuple(np.asarray(key).ravel().tolist())


def test_every_surrogate_kind_gets_its_own_key():
    assert set(S.valid_kinds()) <= set(EVERY_KIND)
    raw = {kind: _raw(S.kind_key(0, kind)) for kind in EVERY_KIND}
    assert len(set(raw.values())) == len(EVERY_KIND), raw
    # and the key depends on the seed and the name only
    assert _raw(S.kind_key(0, "linear")) == _raw(S.kind_key(0, "linear")) != _raw(S.kind_key(1, "linear"))


@pytest.mark.parametrize("a, b", [("bottleneck-svd", "bottleneck-mmd"), ("bottleneck-fusion", "bottleneck-sketch"),
                                  ("bottleneck-random", "bottleneck-fusion")])
def test_equal_length_kinds_have_different_keys(a, b):
    """The defect fixed: `fold_in(PRNGKey(seed), len(kind))` gave these pairs one key."""
    assert len(a) == len(b) and a != b
    old = lambda k: _raw(jax.random.fold_in(jax.random.PRNGKey(0), len(k)))  # noqa: E731
    assert old(a) == old(b)
    assert _raw(S.kind_key(0, a)) != _raw(S.kind_key(0, b))


@pytest.mark.parametrize("flags, message", [
    (["--kinds", "linear,foo"], r"--kinds: unknown \['foo'\]; valid: linear, linear_sgd"),
    (["--kinds", "bottleneck-magnitude"], r"--kinds: unknown \['bottleneck-magnitude'\]"),
    (["--kinds", "linear,linear"], r"listed twice"),
    (["--steps", "0"], r"--steps must be a positive integer, got 0"),
    (["--patience", "-1"], r"--patience must be a non-negative integer, got -1"),
    (["--holdout", "1"], r"--holdout must be in \(0, 1\)"),
    (["--lr", "0"], r"--lr must be a positive number"),
    (["--layers", "3-1"], r"--layers: layer range '3-1' is empty"),
    (["--layers", "x"], r"--layers: cannot parse layers 'x'"),
    (["--plan-widths", "96,a"], r"--plan-widths '96,a': expected integers"),
    (["--plan-widths", "96,0"], r"--plan-widths must be a positive integer, got 0"),
    (["--plan-widths", "96", "--plan-method", "magnitude"], r"unknown --plan-method 'magnitude'; choose from"),
    (["--plan-widths", "96", "--plan-budget", "1.5"], r"--plan-budget must be in \(0, 1\]"),
])
def test_bad_settings_refused_before_any_work(tmp_path, capsys, monkeypatch, flags, message):
    import re

    import ntkfuse
    monkeypatch.setattr(ntkfuse, "load", lambda *a, **k: pytest.fail("model loaded before the checks"))
    rc = fit_surrogates_main(flags + ["--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("fit_surrogates.py: error: ") and re.search(message, err), err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


TINY = ["--layers", "1-2", "--width", "16", "--rank", "8", "--steps", "4", "--eval-every", "2", "--batch-size",
        "32", "--n-examples", "8", "--max-length", "16", "--ntk-examples", "3", "--n-init", "1", "--no-progress"]


@pytest.mark.parametrize("flags, message", [
    (["--width", "64"], r"--width 64 is the MLP width D = 64 itself"),
    (["--width", "65"], r"--width 65 out of range: must be between 1 and the MLP width D = 64"),
    (["--layers", "1-3"], r"--layers: layer 3 out of range: the model has layers 0..2"),
    (["--rank", "33"], r"--rank 33 out of range: must be between 1 and the hidden size d = 32"),
])
def test_bad_settings_for_the_model(tiny_models, tmp_path, capsys, flags, message):
    import re
    args = ["--model", str(tiny_models["roberta"]), "--out", str(tmp_path / "o")] + TINY + flags
    assert fit_surrogates_main(args) == 2
    assert re.search(message, capsys.readouterr().err)


def test_end_to_end_tiny_classifier_and_resume(tiny_models, tmp_path, capsys, monkeypatch):
    out = tmp_path / "fit"
    args = ["--model", str(tiny_models["roberta"]), "--kinds", "linear,bottleneck-prune", "--out", str(out)] + TINY
    assert fit_surrogates_main(args) == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert [r["kind"] for r in res["results"]] == ["linear", "bottleneck-prune"]
    assert res["meta"]["device"]["platform"] == jax.default_backend() and res["meta"]["config_hash"]
    prune = res["results"][1]
    d, D, k = 32, 64, 16
    assert prune["params_per_layer"] == [2 * d * k + k + d] * 2 and prune["steps"] == 4
    assert prune["teacher_params_per_layer"] == [2 * d * D + D + d] * 2
    assert all(np.isfinite(v) for v in prune["block_error_after"] + prune["block_error_before"])
    assert {"ntk_rel", "sign_rel", "output_error", "logit_error"} <= set(prune["after"])
    for name in ("results.csv", "results_model.csv", "results.md", "results.png", "run.json", "parts/linear.json",
                 "parts/bottleneck-prune.json", "model_linear", "model_bottleneck-prune"):
        assert (out / name).exists(), name
    assert (out / "results.csv").read_text().splitlines()[0] == "kind,layer,params,block_err_before,block_err_after"
    assert len((out / "results_model.csv").read_text().splitlines()) == 1 + 2 * 2
    assert "| bottleneck-prune | 1 |" in (out / "results.md").read_text()
    capsys.readouterr()

    # Rerun: both kinds reused, nothing fitted.
    import ntkfuse.surrogate as SG
    monkeypatch.setattr(SG, "fit_blocks", lambda *a, **k: pytest.fail("fit on resume"))
    monkeypatch.setattr(SG, "init_surrogates", lambda *a, **k: pytest.fail("init on resume"))
    assert fit_surrogates_main(args) == 0
    assert capsys.readouterr().out.count("reusing finished result") == 2
    assert json.loads((out / "results.json").read_text())["results"] == res["results"]
    monkeypatch.undo()

    # Another configuration in the same directory: refused, then --fresh recomputes.
    assert fit_surrogates_main(args + ["--seed", "1"]) == 2
    assert "different configuration" in capsys.readouterr().err
    assert fit_surrogates_main(args[:3] + ["linear"] + args[4:] + ["--seed", "1", "--fresh"]) == 0
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["linear.json"]


def _decoder_dir(tmp_path, family):
    """A tiny LlamaForCausalLM / MixtralForCausalLM written with save_pretrained, word-level tokenizer."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tests.experiments.conftest import _tokenizer
    d = tmp_path / family
    d.mkdir()
    V = _tokenizer("gpt2", d)
    torch.manual_seed(0)
    base = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, pad_token_id=None, bos_token_id=0, eos_token_id=0)
    if family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**base))
    else:
        model = transformers.MixtralForCausalLM(transformers.MixtralConfig(**base, num_local_experts=4,
                                                                           num_experts_per_tok=2))
    model.save_pretrained(d)
    return d


DEC = ["--steps", "4", "--eval-every", "2", "--batch-size", "32", "--n-examples", "8", "--max-length", "16",
       "--ntk-examples", "3", "--n-init", "1", "--no-progress"]


@pytest.mark.parametrize("family, kinds", [
    ("llama", "linear,linear_sgd,low_rank_linear,bottleneck-random,bottleneck-fusion,bottleneck-prune"),
    ("mixtral", "linear,bottleneck-random,bottleneck-fusion")])
def test_end_to_end_tiny_decoder_with_defaults_and_plan(tmp_path, capsys, family, kinds):
    """Data, layers, width and rank from the model (webnlg, last two thirds = 1-2, D/4 = 12, d/4 = 8); the NTK
    of the target log-probability; the sensitivity sweep (next-token KL) and width plans."""
    d = _decoder_dir(tmp_path, family)
    out = tmp_path / "fit"
    args = ["--model", str(d), "--kinds", kinds, "--out", str(out), "--plan-widths", "6,24"] + DEC
    assert fit_surrogates_main(args) == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    meta = res["meta"]
    assert meta["data"] == "sample:webnlg" and meta["layers"] == [1, 2] and meta["width"] == 12
    assert meta["rank"] == 8 and meta["ntk_output"] == "target_logprob(sum)"
    assert [r["kind"] for r in res["results"]] == kinds.split(",")
    D = 48 * (4 if family == "mixtral" else 1)
    for r in res["results"]:
        assert all(np.isfinite(v) for v in r["block_error_after"] + r["block_error_before"])
        assert np.isfinite(r["after"]["ntk_rel"]) and np.isfinite(r["after"]["sign_rel"])
        if r["kind"].startswith("bottleneck"):
            router = 4 * 32 if family == "mixtral" else 0
            assert r["params_per_layer"] == [3 * 32 * D // 4 + router] * 2
            assert r["teacher_params_per_layer"] == [3 * 32 * D + router] * 2
            assert r["steps"] == 4
    for name in ("results.csv", "results_model.csv", "results.md", "results.png", "plan.json", "plan.md",
                 "model_bottleneck-fusion"):
        assert (out / name).exists(), name
    plan = json.loads((out / "plan.json").read_text())
    assert len(plan["sensitivity"]) == 4 and all(r["kl"] >= 0 for r in plan["sensitivity"])
    assert set(plan["plans"]) == {"greedy", "knapsack"}


def test_minilm_defaults_resolve_to_the_former_fixed_defaults():
    """Data, layers, width, rank now come from the model; for MiniLM they are the old fixed defaults,
    so the configuration hash of a default run is unchanged."""
    from ntkfuse.models import ModelConfig
    cfg = ModelConfig(family="bert", vocab_size=10, hidden=384, intermediate=1536, num_layers=6, num_heads=12,
                      max_positions=512)
    r = S.resolve(S.SurrogatesConfig(), cfg)
    assert (r.data, r.layers, r.width, r.rank) == ("sample:sentiment", "2-5", 384, 96)
    assert S.resolve(S.SurrogatesConfig(width=10, layers="1,3"), cfg).layers == "1,3"


def test_end_to_end_tiny_switch_with_defaults_and_plan(tmp_path, capsys):
    """An encoder-decoder (Switch, 2 + 2 layers, MoE at 1 and 3 with a capacity that binds): the default layers
    1-3 span both sides and both kinds, so pairs come in groups of their own token counts (encoder, decoder, and
    each capacity-bound MoE layer's dispatched tokens); NTK of the target log-probability; KL on target tokens."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tests.experiments.conftest import _tokenizer
    d = tmp_path / "switch"
    d.mkdir()
    V = _tokenizer("roberta", d)   # <s> 0, <pad> 1, </s> 2
    torch.manual_seed(0)
    transformers.SwitchTransformersForConditionalGeneration(transformers.SwitchTransformersConfig(
        vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, num_experts=4,
        num_sparse_encoder_layers=1, num_sparse_decoder_layers=1, expert_capacity=3,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=1, eos_token_id=2,
        decoder_start_token_id=1)).save_pretrained(d)
    out = tmp_path / "fit"
    kinds = "linear,linear_sgd,bottleneck-random,bottleneck-fusion,bottleneck-prune"
    args = ["--model", str(d), "--kinds", kinds, "--out", str(out), "--plan-widths", "8,32"] + DEC
    assert fit_surrogates_main(args) == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    meta = res["meta"]
    assert meta["data"] == "sample:webnlg" and meta["layers"] == [1, 2, 3] and meta["width"] == 16
    assert meta["ntk_output"] == "target_logprob(sum)"
    enc, dec, moe = meta["tokens_per_layer"][0], meta["tokens_per_layer"][1], meta["tokens_per_layer"][2]
    assert 0 < moe < dec and enc != dec   # capacity 3 drops decoder tokens of the MoE layer
    moe_params = 4 * 32 + 4 * 2 * 32 * 16
    for r in res["results"]:
        assert all(np.isfinite(v) for v in r["block_error_after"] + r["block_error_before"])
        assert np.isfinite(r["after"]["ntk_rel"]) and np.isfinite(r["after"]["output_error"])
        if r["kind"] in ("bottleneck-fusion", "bottleneck-prune"):
            assert r["params_per_layer"] == [moe_params, 2 * 32 * 16, moe_params]
            assert r["steps"] == 4 and r["block_error_after"][1] < r["block_error_before"][1]
    from ntkfuse.checkpoints.orbax import restore_compressed
    blk = restore_compressed(out / "model_bottleneck-fusion")[1]["layers"][3]["mlp"]
    assert (blk.rule, blk.capacity) == ("switch", 3)
    plan = json.loads((out / "plan.json").read_text())
    assert len(plan["sensitivity"]) == 6 and all(r["kl"] >= 0 for r in plan["sensitivity"])
