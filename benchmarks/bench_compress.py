"""Every one-shot method on full-size model shapes: time per method and what it costs.

For roberta-base and gpt2 shapes (random N(0, 0.02) weights: no pretrained checkpoint
is reachable offline) the MLPs of layers 4-11 are compressed from D = 3072 to
k = 768 with each method at its reference settings (k-means n_init = 30, mmd 100
steps, sketch keep = 256 for gpt2 as the reference), then the compressed model runs a
jitted forward and its output error against the original (mean ‖Δh‖₂ over tokens at the
last compressed layer and at the logits) is measured. Prints the accounting table
(params, non-zeros, MLP FLOPs per token) and writes JSON. `compress_s` is wall time
including JIT compilation; the second model reuses compilations where shapes agree.

    python benchmarks/bench_compress.py --out compress.json            # full size (GPU)
    python benchmarks/bench_compress.py --small --out compress.json    # CPU, tiny shapes
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import ntkfuse  # noqa: E402
from benchmarks import harness  # noqa: E402
from ntkfuse import compress, ntk  # noqa: E402


def shapes(model: str, small: bool) -> ntkfuse.ModelConfig:
    if small:
        return ntkfuse.ModelConfig(family=model, vocab_size=256, hidden=64, intermediate=256, num_layers=12,
                                   num_heads=4, max_positions=130, head="lm" if model == "gpt2" else "classifier",
                                   activation="gelu_tanh" if model == "gpt2" else "gelu",
                                   pad_token_id=1 if model == "roberta" else 0, type_vocab_size=1)
    if model == "gpt2":
        return ntkfuse.ModelConfig(family="gpt2", vocab_size=50257, hidden=768, intermediate=3072, num_layers=12,
                                   num_heads=12, max_positions=1024, activation="gelu_tanh", layer_norm_eps=1e-5,
                                   head="lm", type_vocab_size=0)
    return ntkfuse.ModelConfig(family="roberta", vocab_size=50265, hidden=768, intermediate=3072, num_layers=12,
                               num_heads=12, max_positions=514, activation="gelu", layer_norm_eps=1e-5,
                               type_vocab_size=1, pad_token_id=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_small(ap, "tiny shapes (d=64, D=256 -> 64), fewer restarts/steps")
    ap.add_argument("--models", default="roberta,gpt2")
    ap.add_argument("--methods", default=",".join(compress.METHODS))
    ap.add_argument("--layers", default="4-11")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    layers = harness.parse_layers(args.layers)
    methods = harness.check_choices("methods", [m for m in args.methods.split(",") if m], compress.METHODS)

    dev, versions = harness.device(), harness.versions()
    result = {"script": "benchmarks/bench_compress.py", "small": args.small, "layers": layers,
              "device": dev["kind"], "platform": dev["platform"], "jax": versions["jax"],
              "python": versions["python"], "versions": versions, "models": {}}
    for model in args.models.split(","):
        cfg = shapes(model, args.small)
        width = cfg.intermediate // 4
        params = ntkfuse.init_params(cfg, jax.random.PRNGKey(args.seed))
        rng = np.random.default_rng(args.seed)
        ids = rng.integers(3, cfg.vocab_size, size=(args.batch, args.seq)).astype(np.int32)
        batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        rows, variants = [], {"original": params}
        for method in methods:
            opts = {}
            if method in ("fusion", "cluster"):
                opts = {"n_init": 3 if args.small else 30}
            elif method == "mmd" and args.small:
                opts = {"steps": 10}
            elif method == "sketch" and model == "gpt2":
                opts = {"keep": width // 3 if args.small else 256}
            t = harness.time_calls(
                lambda: compress.compress(cfg, params, method, layers, width, jax.random.PRNGKey(args.seed), **opts),
                repeats=0)
            new, t_compress = t.out, t.first_s
            err = ntk.output_error(cfg, params, new, [batch], layer=layers[-1] + 1)
            variants[method] = new
            row = {"method": method, "options": opts, "compress_s": t_compress,
                   "output_error_layer": float(err["layer"]), "output_error_logits": float(err["logits"])}
            rows.append(row)
            print(f"{model:8s} {method:10s} compress {t_compress:8.2f} s   out err L{layers[-1]} "
                  f"{row['output_error_layer']:.4g}  logits {row['output_error_logits']:.4g}", flush=True)
        table = compress.print_compression_table(variants, layers)
        result["models"][model] = {"shape": {"hidden": cfg.hidden, "intermediate": cfg.intermediate,
                                             "width": width, "num_layers": cfg.num_layers},
                                   "methods": rows, "accounting": table}
    out = harness.write_json(args.out, result, indent=2, default=str)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
