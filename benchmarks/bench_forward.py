"""Forward-pass throughput (tokens/s) of ntkfuse's jitted JAX forward vs the Hugging Face
PyTorch model with the same random weights.

For each model (roberta-base shapes, gpt2 124M shapes) a HF model is built with random
init, written with `save_pretrained` to a temporary directory and loaded back with
`ntkfuse.load`, so both sides run identical weights (the script also reports the
relative difference of their float32 logits as a sanity check).

Timing: warm-up calls (compilation included) are excluded; each timed call is one
forward on device-resident inputs, ended by `block_until_ready` (JAX) or
`torch.cuda.synchronize` (PyTorch on GPU); the median over repeats is reported.
Float32 matmul precision: PyTorch's default does not use TF32 (allow_tf32=False), so
the fair JAX comparison is `jax.default_matmul_precision("highest")`; JAX's "default"
precision (TF32 on recent NVIDIA GPUs, no effect on CPU) is measured too and labelled.

    python benchmarks/bench_forward.py --small                  # quick CPU run
    python benchmarks/bench_forward.py --out results/bench_forward.json   # full size, GPU
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave GPU memory for PyTorch too

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import ntkfuse  # noqa: E402
from benchmarks import harness  # noqa: E402

MODELS = ("roberta", "gpt2")
DTYPES = ("float32", "bfloat16")


def hf_config(name: str, small: bool):
    import transformers
    if name == "roberta":
        if small:
            return transformers.RobertaConfig(vocab_size=1000, hidden_size=128, intermediate_size=512,
                                              num_hidden_layers=2, num_attention_heads=4,
                                              max_position_embeddings=258, num_labels=2)
        return transformers.RobertaConfig(vocab_size=50265, hidden_size=768, intermediate_size=3072,
                                          num_hidden_layers=12, num_attention_heads=12,
                                          max_position_embeddings=514, type_vocab_size=1, num_labels=2)
    if name == "gpt2":
        if small:
            return transformers.GPT2Config(vocab_size=1000, n_embd=128, n_layer=2, n_head=4, n_positions=256,
                                           bos_token_id=0, eos_token_id=0)
        return transformers.GPT2Config()  # 124M: vocab 50257, d=768, 12 layers, 12 heads, 1024 positions
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def build(name: str, small: bool, directory: Path):
    import torch
    import transformers
    torch.manual_seed(0)
    cfg = hf_config(name, small)
    cls = transformers.RobertaForSequenceClassification if name == "roberta" else transformers.GPT2LMHeadModel
    model = cls(cfg).eval()
    model.save_pretrained(directory)
    return model


def make_batch(name: str, cfg: ntkfuse.ModelConfig, batch: int, seq: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    low = cfg.pad_token_id + 2 if name == "roberta" else 0  # keep RoBERTa's <s>, <pad>, </s> out
    ids = rng.integers(low, cfg.vocab_size, (batch, seq))
    return {"input_ids": ids.astype(np.int32), "attention_mask": np.ones((batch, seq), np.int32)}


def bench_jax(cfg, params, batch, precision: str, warmup, repeats):
    dev = jax.devices()[0]
    jb = jax.device_put({k: jnp.asarray(v) for k, v in batch.items()}, dev)
    params = jax.device_put(params, dev)
    with jax.default_matmul_precision(precision):
        fn = jax.jit(lambda p, b: ntkfuse.forward(cfg, p, b).logits)
        t = harness.time_calls(lambda: fn(params, jb), repeats, warmup=warmup)
        logits = np.asarray(fn(params, jb), np.float32)
    return t.summary(batch["input_ids"].size), logits


def bench_torch(model, batch, dtype: str, device: str, warmup, repeats):
    import torch
    model = model.to(device=device, dtype=torch.bfloat16 if dtype == "bfloat16" else torch.float32)
    tb = {k: torch.from_numpy(v.astype(np.int64)).to(device) for k, v in batch.items()}
    sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else harness.no_sync
    with torch.inference_mode():
        t = harness.time_calls(lambda: model(**tb).logits, repeats, warmup=warmup, sync=sync)
        logits = model(**tb).logits.float().cpu().numpy()
    model.to("cpu", dtype=torch.float32)
    return t.summary(batch["input_ids"].size), logits


def rel(a, b) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


def device_info(torch_device: str) -> dict:
    import torch
    d = harness.device()
    return {"jax_backend": d["platform"], "jax_device": d["kind"], "jax_version": d["jax"], "torch_version": torch.__version__, "torch_device": torch_device,
            "torch_device_name": torch.cuda.get_device_name(0) if torch_device == "cuda" else platform.processor()
            or platform.machine(), "torch_threads": torch.get_num_threads(),
            "torch_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cpu_count": os.cpu_count(), "python": sys.version.split()[0]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_small(ap, "tiny shapes, batch 4 x seq 32: a quick CPU run")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma list of {MODELS}")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help=f"comma list of {DTYPES}")
    ap.add_argument("--batch", type=int, default=None, help="default 32 (4 with --small)")
    ap.add_argument("--seq", type=int, default=None, help="default 128 (32 with --small)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=None, help="default 20 (5 with --small)")
    ap.add_argument("--f32-precision", default="both", choices=("highest", "default", "both"),
                    help="JAX matmul precision for float32 (torch's default is no TF32 = highest)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch side")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch.set_num_threads (CPU); 1 avoids OpenMP spin-waiting on a shared, busy CPU")
    ap.add_argument("--out", default="results/bench_forward.json")
    args = ap.parse_args(argv)

    import torch
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    models = harness.check_choices("model", [m for m in args.models.split(",") if m], MODELS)
    dtypes = harness.check_choices("dtype", [d for d in args.dtypes.split(",") if d], DTYPES)
    batch_size = args.batch or (4 if args.small else 32)
    seq = args.seq or (32 if args.small else 128)
    repeats = args.repeats or (5 if args.small else 20)
    torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    f32_precisions = ["highest", "default"] if args.f32_precision == "both" else [args.f32_precision]

    result = {"script": "benchmarks/bench_forward.py", "small": args.small, "batch": batch_size, "seq": seq,
              "tokens_per_call": batch_size * seq, "warmup": args.warmup, "repeats": repeats,
              "device": device_info(torch_device), "versions": harness.versions(torch=torch.__version__),
              "runs": []}
    for name in models:
        with tempfile.TemporaryDirectory(prefix=f"bench_{name}_") as tmp:
            hf_model = build(name, args.small, Path(tmp))
            n_params = sum(p.numel() for p in hf_model.parameters())
            for dtype in dtypes:
                loaded = ntkfuse.load(tmp, dtype=dtype, tokenizer=False)
                cfg = loaded.cfg.replace(name=name)
                batch = make_batch(name, cfg, batch_size, seq)
                ntkfuse.check_batch(cfg, batch)
                shape = {"hidden": cfg.hidden, "intermediate": cfg.intermediate, "layers": cfg.num_layers,
                         "heads": cfg.num_heads, "vocab": cfg.vocab_size, "params": n_params}
                ref_logits = None
                if not args.no_torch:
                    t_res, ref_logits = bench_torch(hf_model, batch, dtype, torch_device, args.warmup, repeats)
                    result["runs"].append({"model": name, "dtype": dtype, "impl": "torch", "shape": shape,
                                           "attn_implementation": hf_model.config._attn_implementation,
                                           **t_res})
                    print(f"{name:8s} {dtype:9s} torch              {t_res['tokens_per_s']:12.0f} tok/s "
                          f"(median {t_res['median_s'] * 1e3:.2f} ms)", flush=True)
                for prec in (f32_precisions if dtype == "float32" else ["default"]):
                    j_res, logits = bench_jax(cfg, loaded.params, batch, prec, args.warmup, repeats)
                    if ref_logits is not None:
                        j_res["logits_rel_diff_vs_torch"] = rel(logits, ref_logits)
                    result["runs"].append({"model": name, "dtype": dtype, "impl": "ntkfuse-jax",
                                           "matmul_precision": prec, "shape": shape, **j_res})
                    print(f"{name:8s} {dtype:9s} ntkfuse[{prec:7s}]   {j_res['tokens_per_s']:12.0f} tok/s "
                          f"(median {j_res['median_s'] * 1e3:.2f} ms, compile+first {j_res['first_call_s']:.1f} s"
                          + (f", rel diff vs torch {j_res['logits_rel_diff_vs_torch']:.1e})"
                             if ref_logits is not None else ")"), flush=True)
    harness.write_json(args.out, result, indent=2)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
