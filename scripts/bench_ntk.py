"""Benchmark the empirical NTK engine on roberta-base shapes (or tiny ones on CPU).

    python scripts/bench_ntk.py --n 128 --seq 128 --layers 4-11 --out /tmp/bench_ntk \
        [--peer ../shared/bench/torch_ntk_baseline.py]
    python scripts/bench_ntk.py --n 1024 --out /tmp/bench_ntk_1024      # parameter blocks
    python scripts/bench_ntk.py --small --out /tmp/bench_ntk_small      # CPU

Float32 without TF32 (`jax_default_matmul_precision = "highest"`) unless --precision.
With --peer, the PyTorch baseline runs first in a subprocess, and ntkfuse loads the very
same checkpoint and inputs (`ntkfuse.load`) and compares kernels (relative Frobenius).
Reports compile time (first call) separately from the median of --repeats timed calls,
peak device memory, and a floor: FLOPs (forward, backward down to the lowest selected
layer, per-example weight-gradient einsums, Gram) over the fp32 matmul rate measured on
this device, plus bytes of G written and read over the measured copy bandwidth.
Writes result.json and result.md into --out (atomically).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def parse_layers(text):
    out = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def atomic_write(path: Path, text: str):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def measure_rates(jax, jnp, small):
    """fp32 matmul FLOP/s and copy bandwidth (bytes/s) on the default device."""
    n = 1024 if small else 8192
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        f(a).block_until_ready()
        ts.append(time.perf_counter() - t)
    flops = 2 * n ** 3 / min(ts)
    m = (32 if small else 1024) * 2**20 // 4
    x = jnp.ones((m,), jnp.float32)
    g = jax.jit(lambda x: x * 2.0)
    g(x).block_until_ready()
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        g(x).block_until_ready()
        ts.append(time.perf_counter() - t)
    bw = 2 * m * 4 / min(ts)
    return flops, bw


def floor_flops(cfg, n, t, layers, n_params, n_kinds):
    """FLOPs that any exact method must do (dense matmuls only; softmax/LN/GELU ignored)."""
    d, D = cfg.hidden, cfg.intermediate
    per_tok_layer = 2 * (4 * d * d + 2 * d * D) + 2 * 2 * t * d        # projections + QKᵀ, PV
    tokens = n * t
    fwd = tokens * per_tok_layer * cfg.num_layers
    lo = min(layers)
    bwd = tokens * per_tok_layer * (cfg.num_layers - lo)                # activation cotangents only
    wgrad = 2 * tokens * n_params                                       # einsum('ntD,ntd->nDd')
    gram = 2 * n * n * n_params * n_kinds
    return {"forward": fwd, "backward": bwd, "weight_grads": wgrad, "gram": gram,
            "total": fwd + bwd + wgrad + gram}


def run_peer(args, out: Path, layers_text):
    peer_out = out / "peer"
    cmd = [sys.executable, args.peer, "--n", str(args.n), "--seq", str(args.seq), "--layers", layers_text,
           "--hidden", str(args.hidden), "--intermediate", str(args.intermediate), "--num-layers",
           str(args.num_layers), "--heads", str(args.heads), "--modes", args.peer_modes, "--out", str(peer_out)]
    print("peer:", " ".join(cmd), flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"peer failed ({res.returncode}):\n{res.stderr[-4000:]}")
    return peer_out, json.loads((peer_out / "result.json").read_text())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--layers", default="4-11")
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--intermediate", type=int, default=3072)
    ap.add_argument("--num-layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=50265)
    ap.add_argument("--kinds", default="ntk,sign")
    ap.add_argument("--strategy", default="auto", help="auto, full, blocks, tokens")
    ap.add_argument("--chunk", type=int, default=None)
    ap.add_argument("--param-block", type=int, default=None)
    ap.add_argument("--memory-budget-gb", type=float, default=None)
    ap.add_argument("--compute-dtype", default=None, help="e.g. bfloat16 (accumulation stays float32)")
    ap.add_argument("--precision", default="highest", help="jax_default_matmul_precision (highest = no TF32)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--small", action="store_true", help="tiny shapes for CPU")
    ap.add_argument("--peer", default=None, help="path of torch_ntk_baseline.py to run and compare against")
    ap.add_argument("--peer-modes", default="vmap")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.small:
        args.n, args.seq, args.hidden, args.intermediate = min(args.n, 16), min(args.seq, 16), 32, 64
        args.num_layers, args.heads, args.vocab = 4, 4, 1000 if args.peer is None else 50265
        if args.layers == "4-11":
            args.layers = "2-3"
    layers = parse_layers(args.layers)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import jax
    import jax.numpy as jnp
    jax.config.update("jax_default_matmul_precision", args.precision)
    import ntkfuse
    from ntkfuse import ntk

    peer = None
    if args.peer:
        peer_dir, peer = run_peer(args, out, args.layers)
        cfg, params, _, _ = ntkfuse.load(peer_dir / "checkpoint", tokenizer=False)
        inp = np.load(peer_dir / "inputs.npz")
        batch = {"input_ids": inp["input_ids"].astype(np.int32), "attention_mask": inp["attention_mask"].astype(np.int32)}
    else:
        cfg = ntkfuse.ModelConfig(family="roberta", vocab_size=args.vocab, hidden=args.hidden,
                                  intermediate=args.intermediate, num_layers=args.num_layers, num_heads=args.heads,
                                  max_positions=514, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5,
                                  num_labels=2)
        params = jax.jit(ntkfuse.init_params, static_argnums=0)(cfg, jax.random.PRNGKey(args.seed))
        g = np.random.default_rng(args.seed)
        ids = g.integers(3, cfg.vocab_size, size=(args.n, args.seq)).astype(np.int32)
        ids[:, 0], ids[:, -1] = 0, 2
        batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    batch = {k: jax.device_put(v) for k, v in batch.items()}
    sel = ntk.mlp_layers(layers)
    opts = dict(output=ntk.class_prob(0), selector=sel, kinds=kinds, chunk=args.chunk,
                param_block=args.param_block, compute_dtype=args.compute_dtype, strategy=args.strategy,
                memory_budget_bytes=int(args.memory_budget_gb * 2**30) if args.memory_budget_gb else None)

    dev = jax.devices()[0]
    t0 = time.perf_counter()
    K, plan = ntk.kernels(cfg, params, batch, return_plan=True, **opts)
    jax.block_until_ready(K)
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(ntk.kernels(cfg, params, batch, **opts))
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    stats = dev.memory_stats() or {}
    flops_rate, bw = measure_rates(jax, jnp, args.small)
    fl = floor_flops(cfg, args.n, args.seq, layers, plan.n_params, len(kinds))
    itemsize = 2 if args.compute_dtype in ("bfloat16", "bf16") else 4
    g_traffic = plan.g_bytes * (1 + len(kinds))       # G written once, read per kernel
    floor_s = fl["total"] / flops_rate + g_traffic / bw
    result = {
        "device": str(dev.device_kind), "platform": dev.platform, "jax": jax.__version__,
        "n": args.n, "seq": args.seq, "layers": layers, "n_params": plan.n_params, "kinds": list(kinds),
        "shapes": {"hidden": cfg.hidden, "intermediate": cfg.intermediate, "num_layers": cfg.num_layers,
                   "vocab": cfg.vocab_size},
        "precision": args.precision, "compute_dtype": args.compute_dtype or "float32",
        "plan": {"strategy": plan.strategy, "chunk": plan.chunk, "n_blocks": len(plan.blocks),
                 "g_bytes": plan.g_bytes, "budget": plan.budget, "gram_flops_by_strategy": plan.flops},
        "first_call_s": first, "compile_s_est": max(first - med, 0.0), "median_s": med, "times_s": times,
        "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
        "measured_fp32_flops": flops_rate, "measured_copy_bw": bw, "floor_flops": fl,
        "floor_s": floor_s, "measured_over_floor": med / floor_s,
        "G_bytes_itemsize": itemsize,
    }
    if peer is not None:
        ref = np.load(out / "peer" / "kernels.npz")
        result["peer"] = peer
        result["rel_diff_vs_peer"] = {k: ntk.ntk_error(np.asarray(K[k]), ref[r])["rel"]
                                      for k, r in (("ntk", "K_ntk"), ("sign", "K_sign")) if k in K}
        mode = args.peer_modes.split(",")[-1]
        if mode in peer:
            result["speedup_vs_peer_" + mode] = peer[mode]["total_s"] / med
    atomic_write(out / "result.json", json.dumps(result, indent=2, default=float))
    rows = [("device", result["device"]), ("N × T", f"{args.n} × {args.seq}"), ("params", f"{plan.n_params:,}"),
            ("strategy", f"{plan.strategy} (chunk {plan.chunk}, {len(plan.blocks)} block(s))"),
            ("first call (incl. compile) s", f"{first:.3f}"), ("median s", f"{med:.4f}"),
            ("floor s", f"{floor_s:.4f}"), ("measured / floor", f"{med / floor_s:.2f}"),
            ("peak device memory GB", f"{stats['peak_bytes_in_use'] / 1e9:.2f}" if stats.get("peak_bytes_in_use")
             else "n/a")]
    if peer is not None:
        rows.append(("rel diff vs peer", json.dumps({k: f"{v:.2e}" for k, v in result["rel_diff_vs_peer"].items()})))
        for k, v in result.items():
            if k.startswith("speedup_vs_peer"):
                rows.append((k, f"{v:.2f}×"))
    md = "| quantity | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n"
    atomic_write(out / "result.md", md)
    print(md)


if __name__ == "__main__":
    main()
