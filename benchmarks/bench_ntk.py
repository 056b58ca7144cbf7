"""Benchmark the empirical NTK engine on roberta-base shapes (or tiny ones on CPU).

    python benchmarks/bench_ntk.py --n 128 --peer --accuracy \
        --variants full,full-gram-bf16x3,layers --out /tmp/bench_ntk
    python benchmarks/bench_ntk.py --n 1024 --variants auto --out /tmp/bench_ntk_1024      # "layers"
    python benchmarks/bench_ntk.py --small --variants full,layers --accuracy --out /tmp/s  # CPU

Every variant (see VARIANTS; "default" = the CLI options) runs in this one process after its own
compile: first call (incl. compile), median of --repeats calls, peak device memory so far (the
process maximum, so run the headline variant first). Matmuls are fp32 without TF32
(`jax_default_matmul_precision = "highest"`) unless a variant names a bf16x* preset for all matmuls.
With --peer, the PyTorch baseline runs first in a subprocess (`--peer-modes loop,vmap`: the loop
warms CUDA, so the vmap time is warm), ntkfuse loads the very same checkpoint and inputs, and each
variant reports its speed-up over the peer's vmap and loop totals from this same run.
--accuracy: the float64 Gram of the same fp32 G (computed on the device) is the reference for every
variant and for the peer, and the Gram alone is timed and checked per gram_precision / gram_impl.
Floor: dense-matmul FLOPs (forward, backward to the lowest selected layer, per-example weight
gradients, Gram) over the fp32 matmul rate measured here. Writes result.json / result.md atomically.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import harness  # noqa: E402
from benchmarks.peers import TORCH_NTK as PEER  # noqa: E402

PEER_REL = PEER.relative_to(PEER.parents[2]).as_posix()


def measure_rates(jax, jnp, small):
    """fp32 matmul FLOP/s and copy bandwidth (bytes/s) on the default device."""
    n = 1024 if small else 8192
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    flops = harness.rate(2 * n ** 3, harness.time_calls(lambda: f(a), 5).min_s)
    m = (32 if small else 1024) * 2**20 // 4
    x = jnp.ones((m,), jnp.float32)
    g = jax.jit(lambda x: x * 2.0)
    bw = harness.rate(2 * m * 4, harness.time_calls(lambda: g(x), 5).min_s)
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
    harness.add_small(ap, "tiny shapes for CPU")
    ap.add_argument("--peer", nargs="?", const=str(PEER), default=None,
                    help=f"run the torch peer and compare against it; a bare --peer runs the in-repo {PEER_REL}")
    ap.add_argument("--peer-modes", default="loop,vmap", help="loop first, so the vmap timing is warm")
    ap.add_argument("--variants", default="default",
                    help="comma list; 'default' = the CLI options; others: see VARIANTS (one compile each)")
    ap.add_argument("--accuracy", action="store_true",
                    help="float64 Gram of the same G as reference (needs G to fit) + Gram-only timings")
    ap.add_argument("--time-limit", type=float, default=1e9, help="skip remaining variants after this many s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-kernels", action="store_true", help="also write kernels_<variant>.npz per variant")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.small:
        args.n, args.seq, args.hidden, args.intermediate = min(args.n, 16), min(args.seq, 16), 32, 64
        args.num_layers, args.heads, args.vocab = 4, 4, 1000 if args.peer is None else 50265
        if args.layers == "4-11":
            args.layers = "2-3"
    layers = tuple(harness.parse_layers(args.layers))
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

    t_start = time.perf_counter()
    flops_rate, bw = measure_rates(jax, jnp, args.small)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(sel.split(params)[0]))
    fl = floor_flops(cfg, args.n, args.seq, layers, n_params, len(kinds))
    floor_s = fl["total"] / flops_rate
    dev = harness.device()
    result = {
        "device": dev["kind"], "platform": dev["platform"], "jax": dev["jax"], "versions": harness.versions(),
        "n": args.n, "seq": args.seq, "layers": layers, "n_params": n_params, "kinds": list(kinds),
        "shapes": {"hidden": cfg.hidden, "intermediate": cfg.intermediate, "num_layers": cfg.num_layers,
                   "vocab": cfg.vocab_size},
        "precision": args.precision, "measured_fp32_flops": flops_rate, "measured_copy_bw": bw,
        "floor_flops": fl, "floor_s": floor_s,
        "floor_note": "dense-matmul FLOPs of forward, backward to the lowest selected layer, per-example weight "
                      "gradients and Gram, at the measured fp32 (no TF32) matmul rate",
        "variants": {},
    }
    if peer is not None:
        result["peer"] = peer
    names = [v for v in args.variants.split(",") if v]
    bad = [v for v in names if v not in VARIANTS and v != "default"]
    if bad:
        raise SystemExit(f"unknown variants {bad}; valid: default, {', '.join(VARIANTS)}")
    kernels_by_variant = {}
    for name in names:
        if time.perf_counter() - t_start > args.time_limit:
            result["variants"][name] = {"skipped": "time limit"}
            continue
        v = dict(VARIANTS.get(name, {}))
        matmul = v.pop("matmul", args.precision)
        o = dict(opts, **v)
        if o.get("chunk") == -1:
            o["chunk"] = args.n
        try:
            phases = harness.CompilePhases()
            with jax.default_matmul_precision(matmul):

                def first():
                    with phases:
                        return ntk.kernels(cfg, params, batch, return_plan=True, **o)
                t = harness.time_calls(lambda: ntk.kernels(cfg, params, batch, **o), args.repeats, first=first)
                (K, plan), first, times = t.out, t.first_s, t.times
        except Exception as e:  # noqa: BLE001 - e.g. a preset the backend lacks, or OOM: record, go on
            result["variants"][name] = {"skipped": f"{type(e).__name__}: {str(e)[:300]}"}
            print(name, "failed:", result["variants"][name]["skipped"], flush=True)
            continue
        med = t.median_s
        kernels_by_variant[name] = {k: np.asarray(K[k], np.float64) for k in K}
        if args.save_kernels:
            np.savez(out / f"kernels_{name}.npz", **kernels_by_variant[name])
        row = {"matmul_precision": matmul, "gram_precision": o.get("gram_precision", "highest"),
               "gram_impl": plan.gram_impl, "scan_layers": o.get("scan_layers", False), "compute_dtype": o.get("compute_dtype") or "float32",
               "plan": {"strategy": plan.strategy, "chunk": plan.chunk, "n_blocks": len(plan.blocks),
                        "d_chunks": list(plan.d_chunks), "g_bytes": plan.g_bytes, "budget": plan.budget},
               "first_call_s": first, "first_call_phases_s": phases.seconds, "median_s": med, "times_s": times, "measured_over_floor": med / floor_s,
               "peak_bytes_in_use_so_far": harness.peak_memory_bytes()}
        if peer is not None:
            ref = np.load(out / "peer" / "kernels.npz")
            row["rel_diff_vs_peer"] = {k: ntk.ntk_error(kernels_by_variant[name][k], ref[r])["rel"]
                                       for k, r in (("ntk", "K_ntk"), ("sign", "K_sign")) if k in K}
            for mode in ("vmap", "loop"):
                if mode in peer:
                    row["speedup_vs_peer_" + mode] = peer[mode]["total_s"] / med
        result["variants"][name] = row
        print(name, json.dumps(row, default=float), flush=True)
        harness.write_json(out / "result.json", result, indent=2, default=float)
        del K

    if args.accuracy and "ntk" in kinds:
        acc = accuracy_vs_float64(jax, jnp, ntk, cfg, params, batch, opts, kinds, args.repeats)
        result["gram_only"] = acc["gram_only"]
        for name, kv in kernels_by_variant.items():
            result["variants"][name]["rel_vs_float64"] = {k: float(np.linalg.norm(kv[k] - acc["ref"][k])
                                                              / np.linalg.norm(acc["ref"][k])) for k in kv}
        if peer is not None:
            ref = np.load(out / "peer" / "kernels.npz")
            result["peer_rel_vs_float64"] = {k: float(np.linalg.norm(ref[r] - acc["ref"][k]) / np.linalg.norm(acc["ref"][k]))
                                             for k, r in (("ntk", "K_ntk"), ("sign", "K_sign")) if k in kinds}
    first_name = next(iter(kernels_by_variant), None)
    for name, kv in kernels_by_variant.items():
        result["variants"][name]["rel_vs_" + first_name] = {
            k: float(np.linalg.norm(kv[k] - kernels_by_variant[first_name][k]) / np.linalg.norm(kernels_by_variant[first_name][k]))
            for k in kv}
    harness.write_json(out / "result.json", result, indent=2, default=float)
    md = render_md(result)
    from ntkfuse.files import atomic_write
    atomic_write(out / "result.md", md)
    print(md)


def accuracy_vs_float64(jax, jnp, ntk, cfg, params, batch, opts, kinds, repeats):
    """G of the same inputs (fp32, HIGHEST) → a float64 Gram on the device, the reference for every
    variant; and the Gram alone, timed and checked per gram_precision / gram_impl on that same G."""
    km = ntk.kernels_module
    grads = ntk.per_example_grads(cfg, params, batch, output=opts["output"], selector=opts["selector"],
                                  chunk=km.balanced_chunk(batch["input_ids"].shape[0], 64))
    n = batch["input_ids"].shape[0]
    leaves = [l.reshape(n, -1) for l in jax.tree_util.tree_leaves(grads)]
    del grads
    ref = {k: np.zeros((n, n)) for k in kinds}
    with jax.enable_x64(True):
        f64 = jax.jit(lambda g: (g.astype(jnp.float64) @ g.astype(jnp.float64).T,
                                 g.astype(jnp.float64) @ jnp.sign(g).astype(jnp.float64).T))
        for leaf in leaves:
            for c in range(0, leaf.shape[1], 1 << 21):
                a, b = f64(leaf[:, c:c + (1 << 21)])
                if "ntk" in ref:
                    ref["ntk"] += np.asarray(a)
                if "sign" in ref:
                    ref["sign"] += np.asarray(b)
    out = {}
    combos = [("highest", "split")] + [(gp, impl) for gp in ("bf16x3", "bf16x6", "bf16x9") for impl in ("split", "preset")
                                       if impl == "split" or jax.default_backend() == "gpu"]
    gk = tuple(k for k in kinds if k in ("ntk", "sign"))
    for gp, impl in combos:
        f = jax.jit(lambda ls: km._gram_add({k: jnp.zeros((n, n), jnp.float32) for k in gk}, ls, ls, gk, gp, impl))
        try:
            t = harness.time_calls(lambda: f(leaves), max(repeats, 3), first=lambda: f(leaves))
        except Exception as e:  # noqa: BLE001 - an unsupported preset is reported, not fatal
            out[f"{gp}/{impl}"] = {"error": str(e)[:200]}
            continue
        K = t.out
        out[f"{gp}/{impl}"] = {"median_s": t.median_s,
                               "rel_vs_float64": {k: float(np.linalg.norm(np.asarray(K[k], np.float64) - ref[k])
                                                           / np.linalg.norm(ref[k])) for k in gk}}
        print("gram", gp, impl, out[f"{gp}/{impl}"], flush=True)
    return {"ref": ref, "gram_only": out}


def render_md(r):
    lines = [f"device {r['device']}, jax {r['jax']}, N × T = {r['n']} × {r['seq']}, {r['n_params']:,} params, "
             f"kinds {','.join(r['kinds'])}; floor {r['floor_s']:.4f} s "
             f"({r['floor_flops']['total'] / 1e12:.2f} TFLOP at {r['measured_fp32_flops'] / 1e12:.1f} TFLOP/s fp32)", ""]
    if "peer" in r:
        p = r["peer"]
        lines.append("peer (torch.func): " + ", ".join(f"{m} {p[m]['total_s']:.3f} s (grads {p[m]['grads_s']:.3f} + "
                                                        f"gram {p[m]['gram_s']:.3f})" for m in ("loop", "vmap") if m in p))
        if "peer_rel_vs_float64" in r:
            lines.append("peer rel vs float64: " + json.dumps({k: f"{v:.1e}" for k, v in r["peer_rel_vs_float64"].items()}))
        lines.append("")
    lines += ["| variant | matmuls | Gram | plan | median s | first call s | / floor | peak GB (so far) | "
              "rel. diff | speed-up vs peer vmap |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in r["variants"].items():
        if "skipped" in v:
            lines.append(f"| {name} | skipped ({v['skipped'][:100]}) |||||||||")
            continue
        pl = v["plan"]
        plan = f"{pl['strategy']} chunk {pl['chunk']}" + (f" d_chunks {pl['d_chunks']}" if pl["d_chunks"] else "") + (
            f" {pl['n_blocks']} blocks" if pl["strategy"] == "blocks" else "")
        first = next(iter(r["variants"]))
        rel = ({f"{k} vs float64": x for k, x in v["rel_vs_float64"].items()} if "rel_vs_float64" in v
               else {f"{k} vs {first}": x for k, x in v.get("rel_vs_" + first, {}).items()})
        peak = v.get("peak_bytes_in_use_so_far")
        lines.append(f"| {name} | {v['matmul_precision']} | {v['gram_precision']}/{v['gram_impl']} | {plan} | "
                     f"{v['median_s']:.4f} | {v['first_call_s']:.1f} | {v['measured_over_floor']:.2f} | "
                     f"{peak / 1e9 if peak else float('nan'):.1f} | "
                     + ", ".join(f"{k} {x:.1e}" for k, x in rel.items()) + " | "
                     + (f"{v['speedup_vs_peer_vmap']:.2f}×" if "speedup_vs_peer_vmap" in v else "–") + " |")
    if "gram_only" in r:
        lines += ["", "Gram alone on the same G (fp32 HIGHEST gradients):", "",
                  "| gram precision / impl | median s | rel vs float64 |", "|---|---|---|"]
        for k, v in r["gram_only"].items():
            if "error" in v:
                lines.append(f"| {k} | error: {v['error'][:80]} | |")
            else:
                lines.append(f"| {k} | {v['median_s']:.4f} | "
                             + ", ".join(f"{a} {b:.1e}" for a, b in v["rel_vs_float64"].items()) + " |")
    return "\n".join(lines) + "\n"


VARIANTS = {
    # name: kernels() options (+ "matmul": jax_default_matmul_precision for the whole computation)
    "full": dict(strategy="full"),
    "full-unrolled": dict(strategy="full", scan_layers=False),   # the layer stack unrolled (the default)
    "full-autotune": dict(strategy="full", autotune=True),       # XLA's autotuned Triton GEMMs (ntkfuse.compile)
    "full-scan": dict(strategy="full", scan_layers=True),        # lax.scan over runs of identical layers
    "full-chunk-n": dict(strategy="full", chunk=-1),            # -1: one chunk of all N
    "full-gram-bf16x3": dict(strategy="full", gram_precision="bf16x3"),
    "full-gram-bf16x6": dict(strategy="full", gram_precision="bf16x6"),
    "full-gram-bf16x6-split": dict(strategy="full", gram_precision="bf16x6", gram_impl="split"),
    "layers": dict(strategy="layers"),
    "layers-gram-bf16x3": dict(strategy="layers", gram_precision="bf16x3"),
    "layers-gram-bf16x6": dict(strategy="layers", gram_precision="bf16x6"),
    "full-all-bf16x9": dict(strategy="full", gram_precision="bf16x9", matmul="BF16_BF16_F32_X9"),
    "full-all-bf16x6": dict(strategy="full", gram_precision="bf16x6", matmul="BF16_BF16_F32_X6"),
    "layers-all-bf16x9": dict(strategy="layers", gram_precision="bf16x9", matmul="BF16_BF16_F32_X9"),
    "auto": dict(),
    "auto-unrolled": dict(scan_layers=False),
}


if __name__ == "__main__":
    main()
