"""A 1.7B-parameter Llama end to end (issue 13): load, compress, perplexity and the NTK engine
in bf16, with time, peak host RSS and peak device memory per stage.

The model is SmolLM2-1.7B's shape (d=2048, D=8192, 24 layers, vocab 49152, tied embeddings)
with random weights (`benchmarks/random_checkpoint.py`, written tensor by tensor into a temp
dir unless --checkpoint names one). Stages, in one process:

  write        the random bf16 checkpoint (skipped with --checkpoint)
  load         `ntkfuse.load(dir, dtype=bfloat16)`: the streaming loader
  compress     `ntkfuse.compress.compress(..., "fusion", --layers, --width)` (k-means on the device)
  perplexity   `ntkfuse.eval.sliding_window_nll` on --tokens random token ids (no tokenizer), for
               the original and the compressed model: first call (with compilation), warm median
  ntk          `ntkfuse.ntk.kernels` of the decoders' target log-prob (ntk_compare's output for
               decoders: the sum of log p over the second half of each sequence) w.r.t. the MLPs of
               --ntk-layers, N=--ntk-n examples × --ntk-seq tokens, compute in --ntk-dtype, kinds
               ntk + sign, for the original and the compressed model: first call, warm median

Per stage: seconds, peak host RSS of the stage (VmHWM, reset before each stage through
/proc/self/clear_refs where the kernel allows it, else the process maximum so far), and device
memory (peak so far in the process, and in use after the stage; GPU only). The JSON is written
atomically after every stage, so a crash keeps what finished.

    python benchmarks/bench_llama_big.py --out results/bench_llama_big.json             # GPU (H100)
    python benchmarks/bench_llama_big.py --checkpoint DIR --stages load,compress \\
        --layers 22-23 --n-init 1 --max-iter 5 --out /tmp/big_cpu.json                # 24 GB CPU
    python benchmarks/bench_llama_big.py --small --out /tmp/big_small.json             # CPU smoke run
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness  # noqa: E402
from benchmarks import random_checkpoint as rc  # noqa: E402

STAGES = ("write", "load", "compress", "perplexity", "ntk")
NTK_DTYPES = ("bfloat16", "float32")


# --------------------------------------------------------------------------- memory records


def _status_bytes(field: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def host_peak_rss() -> int:
    """Peak resident bytes since the last reset (VmHWM), else the process maximum (ru_maxrss)."""
    hwm = _status_bytes("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_in_use():
    import jax
    try:
        return (jax.devices()[0].memory_stats() or {}).get("bytes_in_use")
    except Exception:  # noqa: BLE001 - backends without memory statistics
        return None


@contextlib.contextmanager
def stage(result: dict, name: str, out: Path):
    """Time a stage and record its memory into result["stages"][name]; write the JSON after it."""
    row = result["stages"].setdefault(name, {})
    per_stage = reset_peak_rss()
    rss0 = _status_bytes("VmRSS")
    t0 = time.perf_counter()
    yield row
    row["wall_s"] = time.perf_counter() - t0
    row["host_rss_before_gb"] = None if rss0 is None else rss0 / 1e9
    row["host_rss_peak_gb"] = host_peak_rss() / 1e9
    row["host_rss_peak_scope"] = "stage" if per_stage else "process"
    row["host_rss_after_gb"] = (_status_bytes("VmRSS") or 0) / 1e9
    peak, used = harness.peak_memory_bytes(), device_in_use()
    row["device_peak_so_far_gb"] = None if peak is None else peak / 1e9
    row["device_in_use_after_gb"] = None if used is None else used / 1e9
    harness.write_json(out, result, default=float)
    print(f"{name}: {json.dumps(row, default=float)}", flush=True)


# --------------------------------------------------------------------------- inputs


def ntk_batch(n: int, seq: int, vocab: int, seed: int = 1) -> dict:
    """Random prompt + target sequences: the target is the second half (target_mask)."""
    import numpy as np
    g = np.random.default_rng(seed)
    ids = g.integers(0, vocab, (n, seq), dtype=np.int32)
    tm = np.zeros((n, seq), np.int32)
    tm[:, seq // 2:] = 1
    return {"input_ids": ids, "attention_mask": np.ones((n, seq), np.int32), "target_mask": tm}


def param_bytes(params) -> int:
    import jax
    return int(sum(x.nbytes for x in jax.tree_util.tree_leaves(params)))


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_small(ap, "a tiny Llama config (d=64, 4 layers) and small inputs, for a CPU smoke run")
    ap.add_argument("--checkpoint", help="a Llama checkpoint directory to use instead of writing the random one")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)}")
    ap.add_argument("--layers", default="16-23", help="layers to compress (default: the last third)")
    ap.add_argument("--width", type=int, help="compressed MLP width (default D/4)")
    ap.add_argument("--n-init", type=int, default=4, help="k-means restarts")
    ap.add_argument("--max-iter", type=int, default=100, help="k-means Lloyd iterations at most")
    ap.add_argument("--tokens", type=int, default=16384, help="length of the random text (token ids)")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--stride", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--ntk-layers", default="22-23", help="layers whose MLPs the NTK differentiates")
    ap.add_argument("--ntk-n", type=int, default=32)
    ap.add_argument("--ntk-seq", type=int, default=128)
    ap.add_argument("--ntk-dtype", default="bfloat16", choices=NTK_DTYPES,
                    help="compute dtype of the NTK (the params are bf16; float32 casts a copy)")
    ap.add_argument("--repeats", type=int, default=3, help="timed warm calls of perplexity and NTK")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="result JSON")
    args = ap.parse_args(argv)
    args.stages = harness.check_choices("stages", [s for s in args.stages.split(",") if s], STAGES)
    if args.small:
        args.layers = "2-3" if args.layers == "16-23" else args.layers
        args.ntk_layers = "2-3" if args.ntk_layers == "22-23" else args.ntk_layers
        args.n_init, args.max_iter = min(args.n_init, 2), min(args.max_iter, 10)
        args.tokens, args.max_length, args.stride, args.batch_size = min(args.tokens, 256), 64, 32, 4
        args.ntk_n, args.ntk_seq, args.repeats = min(args.ntk_n, 4), min(args.ntk_seq, 16), min(args.repeats, 2)
    config = rc.SMALL if args.small else rc.SMOLLM2_1_7B
    if args.checkpoint:
        try:
            config = json.loads((Path(args.checkpoint) / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise harness.BenchError(f"--checkpoint {args.checkpoint}: no readable config.json ({e})") from None
    n = config["num_hidden_layers"]
    args.layers, args.ntk_layers = harness.parse_layers(args.layers), harness.parse_layers(args.ntk_layers)
    for flag, ls in (("--layers", args.layers), ("--ntk-layers", args.ntk_layers)):
        if not ls or min(ls) < 0 or max(ls) >= n:
            raise harness.BenchError(f"{flag} {ls} out of range for a model of {n} layers")
    return args, config


def main(argv=None):
    args, config = parse_args(argv)
    layers, ntk_layers = args.layers, args.ntk_layers
    out = Path(args.out)

    import jax
    import numpy as np

    import ntkfuse
    from ntkfuse.compress import compress
    from ntkfuse.eval import sliding_window_nll
    from ntkfuse.ntk import kernels, mlp_layers, target_logprob

    result = {"benchmark": "llama_big", "small": args.small, "device": harness.device(),
              "versions": harness.versions(), "settings": {k: v for k, v in vars(args).items() if k != "out"},
              "stages": {}}
    with tempfile.TemporaryDirectory(prefix="ntkfuse-llama-big-") as tmp:
        ckpt = Path(args.checkpoint) if args.checkpoint else Path(tmp) / "model"
        if not args.checkpoint:
            with stage(result, "write", out) as row:
                rc.write_checkpoint(ckpt, config, dtype="bfloat16", seed=args.seed)
                row["checkpoint_bytes"] = sum(f.stat().st_size for f in ckpt.iterdir())
        result["checkpoint"] = str(ckpt) if args.checkpoint else "random (temp dir)"

        with stage(result, "load", out) as row:
            loaded = ntkfuse.load(ckpt, dtype="bfloat16", tokenizer=False)
            jax.block_until_ready(loaded.params)
            cfg, params = loaded.cfg, loaded.params
            row["param_bytes"] = param_bytes(params)
            row["n_params"] = int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
        result["model"] = {"hidden": cfg.hidden, "intermediate": cfg.intermediate, "num_layers": cfg.num_layers,
                           "vocab_size": cfg.vocab_size, "n_params": row["n_params"], "dtype": "bfloat16"}
        width = args.width or cfg.intermediate // 4
        models = {"original": params}

        if "compress" in args.stages:
            with stage(result, "compress", out) as row:
                small = compress(cfg, params, "fusion", layers, width, jax.random.PRNGKey(args.seed),
                                 n_init=args.n_init, max_iter=args.max_iter)
                jax.block_until_ready(small)
                row.update(method="fusion", layers=layers, width=width, n_init=args.n_init, max_iter=args.max_iter,
                           param_bytes=param_bytes(small))
            models["compressed"] = small

        if "perplexity" in args.stages:
            text = np.random.default_rng(args.seed + 1).integers(0, cfg.vocab_size, args.tokens, dtype=np.int32)
            for name, p in models.items():
                with stage(result, f"perplexity_{name}", out) as row:
                    t = harness.time_calls(lambda p=p: sliding_window_nll(
                        cfg, p, text, args.max_length, args.stride, args.batch_size), args.repeats,
                        sync=harness.no_sync)
                    r = t.out
                    row.update(t.summary(r.tokens, "tokens"), perplexity=r.perplexity, tokens_scored=r.tokens,
                               windows=r.windows, max_length=r.max_length, stride=r.stride)

        if "ntk" in args.stages:
            batch = ntk_batch(args.ntk_n, args.ntk_seq, cfg.vocab_size, args.seed + 2)
            ks = {}
            for name, p in models.items():
                with stage(result, f"ntk_{name}", out) as row:
                    run = lambda p=p: kernels(cfg, p, batch, output=target_logprob(),  # noqa: E731
                                              selector=mlp_layers(ntk_layers), kinds=("ntk", "sign"),
                                              compute_dtype=args.ntk_dtype, return_plan=True)
                    t = harness.time_calls(run, args.repeats)
                    K, plan = t.out
                    ks[name] = Kn = np.asarray(K["ntk"], np.float64)
                    row.update(t.summary(args.ntk_n, "examples"), layers=ntk_layers, n=args.ntk_n, seq=args.ntk_seq,
                               compute_dtype=args.ntk_dtype, strategy=plan.strategy, chunk=plan.chunk,
                               n_params=plan.n_params, finite=bool(np.isfinite(Kn).all()))
            if len(ks) == 2:   # what ntk_compare reports: ‖K_compressed − K_original‖_F / ‖K_original‖_F
                result["ntk_rel_error"] = float(np.linalg.norm(ks["compressed"] - ks["original"])
                                                / np.linalg.norm(ks["original"]))
    result["total_wall_s"] = sum(r["wall_s"] for r in result["stages"].values())
    harness.write_json(out, result, default=float)
    print(json.dumps({k: v for k, v in result.items() if k != "versions"}, indent=1, default=float)[:6000])


if __name__ == "__main__":
    main()
