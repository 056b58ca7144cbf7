"""Checkpoint I/O, one module per job: `hub` (where a checkpoint is), `formats` (reading
weight files), `mapping` (HF names → params, with each family's weight map), `load`
(config + params), `tokenizer` (the checkpoint's tokenizer, without importing torch where it
can), `orbax` (saving and restoring compressed models), `errors` (CheckpointError).
Tokenising is data code: `ntkfuse.data.tokenize`."""
from .errors import CheckpointError
from .formats import WEIGHT_FILES, read_flax_msgpack, read_safetensors, read_torch_bin, read_weights
from .hub import DEFAULT_ALIASES, DEFAULT_MODEL, default_model_dir, resolve
from .load import Loaded, load, load_config, params_from_tensors
from .tokenizer import load_tokenizer
from .orbax import restore_compressed, save_compressed

__all__ = ["CheckpointError", "Loaded", "load", "load_config", "load_tokenizer", "params_from_tensors",
           "read_weights", "read_safetensors", "read_flax_msgpack", "read_torch_bin", "WEIGHT_FILES",
           "resolve", "default_model_dir", "DEFAULT_MODEL", "DEFAULT_ALIASES", "save_compressed",
           "restore_compressed"]
