"""Random Llama checkpoints of any size, written tensor by tensor (no torch, no model in memory).

A 1.7B-parameter checkpoint cannot be made by instantiating a PyTorch model on a small
machine (the model alone needs GBs), so this writes the safetensors format directly: the
header first (every tensor's name, dtype, shape and byte range are known from the config),
then each tensor's bytes, generated one at a time. Host memory stays one tensor's worth.

Values: bf16 bit patterns with a random sign and mantissa and exponent 2^-6, i.e. uniform-ish
|w| in [1/64, 1/32) (std ≈ 0.024, close to HF's N(0, 0.02) init); norm scales are 1. An fp32
checkpoint holds exactly the same values (bf16 bits shifted into the high half of each
float32), so fp32 → bf16 loading must reproduce the bf16 checkpoint bit for bit.

    python -m benchmarks.random_checkpoint OUT_DIR [--dtype bfloat16|float32] [--shards N] [--small]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

# SmolLM2-1.7B's config.json (HuggingFaceTB/SmolLM2-1.7B): d=2048, D=8192, 24 layers, 32 heads
# (no GQA), vocab 49152, tied embeddings; rope_theta and max_position_embeddings are the
# long-context values of the released checkpoint.
SMOLLM2_1_7B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
    "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32, "num_key_value_heads": 32,
    "vocab_size": 49152, "tie_word_embeddings": True, "rope_theta": 130000.0, "rms_norm_eps": 1e-5,
    "max_position_embeddings": 8192, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
    "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": None, "torch_dtype": "bfloat16",
}

# A tiny config of the same shape family, for CPU smoke runs and tests.
SMALL = {**SMOLLM2_1_7B, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 4,
         "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 512, "max_position_embeddings": 256}

_ST = {"bfloat16": ("BF16", 2), "float32": ("F32", 4)}


def tensor_specs(config: dict) -> list[tuple[str, tuple]]:
    """[(HF name, shape)] of a Llama checkpoint with this config, in file order."""
    d, D, L = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    hd = d // config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or config["num_attention_heads"]
    out = [("model.embed_tokens.weight", (config["vocab_size"], d))]
    for i in range(L):
        p = f"model.layers.{i}"
        out += [(f"{p}.input_layernorm.weight", (d,)), (f"{p}.self_attn.q_proj.weight", (d, d)),
                (f"{p}.self_attn.k_proj.weight", (kv * hd, d)), (f"{p}.self_attn.v_proj.weight", (kv * hd, d)),
                (f"{p}.self_attn.o_proj.weight", (d, d)), (f"{p}.post_attention_layernorm.weight", (d,)),
                (f"{p}.mlp.gate_proj.weight", (D, d)), (f"{p}.mlp.up_proj.weight", (D, d)),
                (f"{p}.mlp.down_proj.weight", (d, D))]
    out.append(("model.norm.weight", (d,)))
    if not config.get("tie_word_embeddings"):
        out.append(("lm_head.weight", (config["vocab_size"], d)))
    return out


def random_bf16_bits(shape, seed: int, name: str) -> np.ndarray:
    """uint16 bf16 bit patterns (module docstring); norm weights (1-D) are 1.0. Deterministic per
    (seed, name), so a test can regenerate any tensor without keeping the file's contents."""
    if len(shape) == 1:
        return np.full(shape, 0x3F80, np.uint16)                          # 1.0
    g = np.random.default_rng([seed, *name.encode()])
    return (g.integers(0, 1 << 16, size=shape, dtype=np.uint16) & 0x807F) | 0x3C80


def tensor_bytes(bits: np.ndarray, dtype: str) -> np.ndarray:
    """The stored array of `dtype` for bf16 `bits` (float32: the same values, exactly)."""
    if dtype == "bfloat16":
        return bits
    return bits.astype(np.uint32) << 16


def _header(specs, dtype) -> tuple[bytes, list]:
    code, size = _ST[dtype]
    header, offsets, pos = {"__metadata__": {"format": "pt"}}, [], 0
    for name, shape in specs:
        n = int(np.prod(shape)) * size
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [pos, pos + n]}
        offsets.append(pos)
        pos += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)            # data 8-byte aligned, as safetensors writes it
    return len(raw).to_bytes(8, "little") + raw, offsets


def write_safetensors(path: Path, specs, dtype: str, seed: int) -> None:
    """One safetensors file of `specs`, each tensor generated and written in turn."""
    head, _ = _header(specs, dtype)
    with open(path, "wb") as f:
        f.write(head)
        for name, shape in specs:
            f.write(tensor_bytes(random_bf16_bits(shape, seed, name), dtype).tobytes())


def write_checkpoint(out: str | Path, config: dict = SMOLLM2_1_7B, *, dtype: str = "bfloat16", shards: int = 1,
                     seed: int = 0) -> Path:
    """config.json + `model.safetensors` (shards == 1) or `model-0000k-of-0000n.safetensors` with
    `model.safetensors.index.json` (tensors split in file order into `shards` runs of about equal
    bytes). Returns the directory."""
    if dtype not in _ST:
        raise ValueError(f"dtype must be one of {', '.join(_ST)}, got {dtype!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({**config, "torch_dtype": dtype}, indent=2))
    specs = tensor_specs(config)
    if shards == 1:
        write_safetensors(out / "model.safetensors", specs, dtype, seed)
        return out
    sizes = np.array([int(np.prod(s)) for _, s in specs])
    cut = np.searchsorted(np.cumsum(sizes), sizes.sum() * np.arange(1, shards) / shards)
    groups = np.split(np.arange(len(specs)), cut)
    weight_map = {}
    for k, idx in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = [specs[i] for i in idx]
        write_safetensors(out / fname, part, dtype, seed)
        weight_map.update({name: fname for name, _ in part})
    total = int(sizes.sum()) * _ST[dtype][1]
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return out


def n_params(config: dict) -> int:
    return sum(int(np.prod(s)) for _, s in tensor_specs(config))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--dtype", default="bfloat16", choices=tuple(_ST))
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--small", action="store_true", help="a tiny config instead of SmolLM2-1.7B's")
    args = ap.parse_args(argv)
    cfg = SMALL if args.small else SMOLLM2_1_7B
    write_checkpoint(args.out, cfg, dtype=args.dtype, shards=args.shards, seed=args.seed)
    print(f"{args.out}: {n_params(cfg):,} parameters, {args.dtype}, {args.shards} shard(s)")


if __name__ == "__main__":
    main()
