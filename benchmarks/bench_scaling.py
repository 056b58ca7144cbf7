"""Multi-device scaling (issue 15): the sharded NTK engine and k-means on one device vs all
local devices, in one process (one device call on a multi-GPU host).

NTK: roberta-base shape (random weights, d=768, D=3072, 12 layers), MLPs of layers 4-11,
both kernels, fp32 without TF32, N examples × 128 tokens for each --n; the plan's strategy
(`auto`: "full" while G fits, else "layers") with `devices=1` and with every device:
first call, median of --repeats, peak memory per device, scaling efficiency
t₁ / (devices · t_all) and the kernels' relative Frobenius difference between the two
(issue target ≤ 1e-6). k-means: the 8 MLPs of layers 4-11 (3072 neurons of length 1537 →
768 clusters, n_init 30) on one device vs all devices (layers split across them).

    python benchmarks/bench_scaling.py --out results/bench_scaling.json          # GPUs
    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python benchmarks/bench_scaling.py --small --out /tmp/scaling.json       # CPU check

Targets (N = 4096): ≥ 1.8× on 2 devices, ≥ 3.5× on 4. Writes one JSON atomically after
every row, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import harness  # noqa: E402
from benchmarks.bench_kmeans import neuron_features, random_block  # noqa: E402

TARGETS = {2: 1.8, 4: 3.5}


def peak_per_device() -> list:
    import jax
    out = []
    for d in jax.local_devices():
        try:
            out.append((d.memory_stats() or {}).get("peak_bytes_in_use"))
        except Exception:  # noqa: BLE001 - a backend without memory statistics
            out.append(None)
    return out


def runs(n_dev: int) -> tuple:
    """(name, devices) pairs: one device, and all of them when there are several (with one
    device visible the run is the one-device baseline only)."""
    return (("one", 1),) + ((("all", n_dev),) if n_dev > 1 else ())


def ntk_rows(args, n: int) -> dict:
    import jax
    import ntkfuse
    from ntkfuse import ntk
    small = args.small
    cfg = harness.roberta_cfg(small)
    params = jax.jit(ntkfuse.init_params, static_argnums=0)(cfg, jax.random.PRNGKey(args.seed))
    ids = np.random.default_rng(args.seed).integers(3, cfg.vocab_size, size=(n, args.seq)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 0, 2
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    layers = harness.parse_layers("2-3" if small else args.layers)
    opts = dict(output=ntk.class_prob(0), selector=ntk.mlp_layers(layers), kinds=("ntk", "sign"))
    rows, ks = {}, {}
    n_dev = len(jax.local_devices())
    for name, devices in runs(n_dev):
        t = harness.time_calls(lambda: ntk.kernels(cfg, params, batch, devices=devices, **opts), args.repeats,
                               first=lambda: ntk.kernels(cfg, params, batch, devices=devices, return_plan=True,
                                                         **opts))
        K, plan = t.out
        ks[name] = {k: np.asarray(v, np.float64) for k, v in K.items()}
        rows[name] = {"devices": devices, "strategy": plan.strategy, "chunk": plan.chunk, "d_chunks": list(plan.d_chunks),
                      "g_bytes": plan.g_bytes, "budget_bytes": plan.budget,
                      "first_call_s": t.first_s, "median_s": t.median_s, "times_s": t.times,
                      "peak_bytes_per_device_so_far": peak_per_device()}
        del K
    if "all" in rows:
        rows["speedup"] = rows["one"]["median_s"] / rows["all"]["median_s"]
        rows["scaling_efficiency"] = rows["speedup"] / n_dev
        rows["rel_diff"] = {k: float(np.linalg.norm(ks["all"][k] - ks["one"][k]) / np.linalg.norm(ks["one"][k]))
                            for k in ks["one"]}
    rows["target_speedup"] = TARGETS.get(n_dev)
    return rows


def kmeans_rows(args) -> dict:
    import jax
    from ntkfuse.compress.kmeans import kmeans_batched
    d, D, k = (32, 128, 32) if args.small else (768, 3072, 768)
    layers = harness.parse_layers("0-3" if args.small else args.layers)
    Xs = np.stack([neuron_features(*random_block(l, args.seed, d, D)[:3]) for l in layers])
    key = jax.random.PRNGKey(args.seed)
    out, res = {}, {}
    n_init = 4 if args.small else args.n_init
    for name, devices in runs(len(jax.local_devices())):
        t = harness.time_calls(lambda: kmeans_batched(Xs, k, key, n_init=n_init, devices=devices), args.repeats)
        res[name] = t.out
        out[name] = {"devices": devices, "first_call_s": t.first_s, "median_s": t.median_s, "times_s": t.times}
    if "all" in out:
        out["speedup"] = out["one"]["median_s"] / out["all"]["median_s"]
        out["same_labels"] = bool(np.array_equal(np.asarray(res["one"].labels), np.asarray(res["all"].labels)))
        out["inertia_rel_diff"] = float(np.max(np.abs(np.asarray(res["all"].inertia) - np.asarray(res["one"].inertia))
                                               / np.abs(np.asarray(res["one"].inertia))))
    out["shape"] = {"layers": layers, "neurons": D, "length": 2 * d + 1, "k": k, "n_init": n_init}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_small(ap, "CPU-sized shapes (run with XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    ap.add_argument("--n", default="1024,4096", help="comma list of example counts N (default 1024,4096)")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--layers", default="4-11")
    ap.add_argument("--n-init", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", default="ntk,kmeans", help="comma list of ntk, kmeans")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    parts = harness.check_choices("parts", [p for p in args.parts.split(",") if p], ("ntk", "kmeans"))
    ns = [int(x) for x in args.n.split(",") if x]
    if args.small:
        ns, args.seq = [min(x, 24) for x in ns][:1] + ([11] if len(ns) > 1 else []), min(args.seq, 16)
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    result = {"benchmark": "scaling", "small": args.small, "device": harness.device(),
              "local_devices": len(jax.local_devices()), "versions": harness.versions(),
              "settings": {"n": ns, "seq": args.seq, "layers": args.layers, "n_init": args.n_init,
                           "repeats": args.repeats, "precision": "highest (no TF32)"},
              "targets": TARGETS, "ntk": {}, "kmeans": None}
    if len(jax.local_devices()) < 2:
        print("warning: one device visible: 'all' equals 'one' (a baseline only)", file=sys.stderr)
    t0 = time.perf_counter()
    if "ntk" in parts:
        for n in ns:
            result["ntk"][str(n)] = ntk_rows(args, n)
            print(f"ntk N={n}:", {k: v for k, v in result["ntk"][str(n)].items() if k in
                                  ("one", "speedup", "scaling_efficiency", "rel_diff")}, flush=True)
            harness.write_json(args.out, result, default=float)
    if "kmeans" in parts:
        result["kmeans"] = kmeans_rows(args)
        print("kmeans:", {k: result["kmeans"].get(k) for k in ("one", "speedup", "same_labels", "inertia_rel_diff")},
              flush=True)
    result["wall_s"] = time.perf_counter() - t0
    harness.write_json(args.out, result, default=float)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
