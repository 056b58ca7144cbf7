"""Benchmark: batched JAX k-means on MLP sub-neurons vs the scikit-learn peer.

Data (deterministic, documented so the peer clusters the same points):
  (a)/(b) roberta-base-shaped random blocks, d=768, D=3072 (``--small``: d=32, D=128).
      Layer l uses ``numpy.random.default_rng([seed, l])`` and draws, in this order,
      W1 (D, d), b1 (D,), W2 (d, D), b2 (d,), each i.i.d. N(0, 0.02) in float64, cast to
      float32. Neuron i is z_i = [W1[i], b1[i], W2[:, i]] (length 2d+1 = 1537).
  (c) the real MiniLM (all-MiniLM-L6-v2) layers 2-5: 1536 neurons of length 769, k=384.

Timing: JAX wall time of the first call (includes compilation) and the median of
``--repeats`` later calls (jitted, ``block_until_ready``); compile ≈ first − median.

  python benchmarks/bench_kmeans.py --small --out /tmp/bench_kmeans.json
  python benchmarks/bench_kmeans.py --out bench_kmeans.json \
      --peer --peer-layers 4
  # only write the peer's safetensors data (no JAX needed):
  python benchmarks/bench_kmeans.py --write-data DIR --layers 4
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import harness  # noqa: E402
from benchmarks.peers import SKLEARN_KMEANS as PEER  # noqa: E402

PEER_REL = PEER.relative_to(PEER.parents[2]).as_posix()


def random_block(layer: int, seed: int = 0, d: int = 768, D: int = 3072):
    """One roberta-base-shaped MLP block (W1, b1, W2, b2) in float32; see module doc."""
    rng = np.random.default_rng([seed, layer])
    w1 = rng.normal(0.0, 0.02, (D, d)).astype(np.float32)
    b1 = rng.normal(0.0, 0.02, (D,)).astype(np.float32)
    w2 = rng.normal(0.0, 0.02, (d, D)).astype(np.float32)
    b2 = rng.normal(0.0, 0.02, (d,)).astype(np.float32)
    return w1, b1, w2, b2


def neuron_features(w1, b1, w2):
    return np.concatenate([w1, b1[:, None], w2.T], axis=1).astype(np.float32)


def write_peer_checkpoint(directory, layers, seed, d, D):
    """Safetensors dir with HF BERT/RoBERTa names, as the sklearn peer script reads them."""
    from safetensors.numpy import save_file
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for l in layers:
        w1, b1, w2, b2 = random_block(l, seed, d, D)
        pre = f"roberta.encoder.layer.{l}."
        tensors[pre + "intermediate.dense.weight"] = w1
        tensors[pre + "intermediate.dense.bias"] = b1
        tensors[pre + "output.dense.weight"] = w2
        tensors[pre + "output.dense.bias"] = b2
    tmp = directory / "model.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, directory / "model.safetensors")
    return directory


# ----------------------------------------------------------------------------- JAX timing

def _timed(fn, repeats):
    """(first-call seconds incl. compilation, median of `repeats` later calls, times, result)."""
    t = harness.time_calls(fn, repeats)
    return t.first_s, t.median_s, t.times, t.out


def _km_summary(r, first, med, times):
    import numpy as np
    inertia = np.atleast_1d(np.asarray(r.inertia, np.float64))
    n_iter = np.atleast_1d(np.asarray(r.n_iter))
    counts = np.asarray(r.counts)
    return {"first_call_s": first, "median_s": med, "times_s": times,
            "compile_s_estimate": first - med if times else None,
            "inertia": inertia.tolist(), "n_iter": n_iter.tolist(),
            "min_cluster_size": int(counts.min())}


def run_jax(args, sizes):
    import jax
    import jax.numpy as jnp
    from ntkfuse.compress import kmeans, kmeans_batched

    d, D, k = sizes["d"], sizes["D"], sizes["k"]
    opts = dict(n_init=args.n_init, max_iter=args.max_iter, tol=args.tol)
    key = jax.random.key(args.seed)
    res = {}
    layers = harness.parse_layers(args.layers)
    blocks = {l: random_block(l, args.seed, d, D) for l in layers}
    feats = {l: neuron_features(*blocks[l][:3]) for l in layers}

    # (a) one layer (the first of --layers), on the device
    X = jnp.asarray(feats[layers[0]])
    first, med, times, r = _timed(lambda: kmeans(X, k, key, **opts), args.repeats)
    res["a_one_layer"] = {"layer": layers[0], "shape": list(X.shape), "k": k, **opts,
                          **_km_summary(r, first, med, times)}
    print("(a)", json.dumps(res["a_one_layer"]), flush=True)

    # (b) all layers in one batched call (layer i uses jax.random.split(key, L)[i])
    Xs = jnp.asarray(np.stack([feats[l] for l in layers]))
    first, med, times, r = _timed(lambda: kmeans_batched(Xs, k, key, **opts), args.repeats)
    res["b_batched_layers"] = {"layers": layers, "shape": list(Xs.shape), "k": k, **opts,
                               **_km_summary(r, first, med, times)}
    print("(b)", json.dumps(res["b_batched_layers"]), flush=True)

    # (c) real MiniLM layers
    if not args.skip_minilm:
        import ntkfuse
        from ntkfuse.compress import neuron_features as nf
        cfg, params, path, _ = ntkfuse.load("minilm")
        ml = harness.parse_layers(args.minilm_layers)
        Xm = jnp.stack([nf(params["layers"][l]["mlp"]) for l in ml])
        mopts = dict(n_init=args.minilm_n_init, max_iter=args.minilm_max_iter, tol=args.tol)
        km = args.minilm_k
        first, med, times, r = _timed(lambda: kmeans_batched(Xm, km, key, **mopts), args.repeats)
        res["c_minilm"] = {"layers": ml, "shape": list(Xm.shape), "k": km, "checkpoint": str(path), **mopts,
                           **_km_summary(r, first, med, times)}
        print("(c)", json.dumps(res["c_minilm"]), flush=True)
    return res


# ----------------------------------------------------------------------------- peer (sklearn)

def run_peer(args, sizes, workdir):
    """Run the sklearn peer script in a subprocess on the same data; returns its result.json."""
    layers = harness.parse_layers(args.peer_layers)
    data = write_peer_checkpoint(Path(workdir) / "data", layers, args.seed, sizes["d"], sizes["D"])
    out = Path(workdir) / "peer_out"
    env = dict(os.environ)
    if args.peer_threads:
        for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[v] = str(args.peer_threads)
    cmd = [sys.executable, args.peer, str(data), "--layers", ",".join(map(str, layers)), "--k", str(sizes["k"]),
           "--n-init", str(args.n_init), "--seed", str(args.seed), "--out", str(out)]
    print("peer:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)
    return json.loads((out / "result.json").read_text())


def compare(jax_res, peer):
    """Inertia ratio (JAX / sklearn) and speed-up (sklearn s / JAX median s) per peer layer."""
    a = jax_res["a_one_layer"]
    b = jax_res["b_batched_layers"]
    rows = {}
    for l, p in peer["layers"].items():
        l = int(l)
        if l == a["layer"]:
            ji, jt, jf = a["inertia"][0], a["median_s"], a["first_call_s"]
        elif l in b["layers"]:
            i = b["layers"].index(l)
            ji, jt, jf = b["inertia"][i], b["median_s"] / len(b["layers"]), b["first_call_s"] / len(b["layers"])
        else:
            continue
        rows[l] = {"sklearn_inertia": p["inertia"], "jax_inertia": ji, "inertia_ratio": ji / p["inertia"],
                   "sklearn_s": p["seconds"], "jax_median_s": jt, "speedup_median": p["seconds"] / jt,
                   "speedup_first_call": p["seconds"] / jf, "sklearn_iterations": p.get("iterations")}
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_small(ap, "CPU-sized run: d=32, D=128, k=32; MiniLM n_init=1, max_iter=20; 1 repeat")
    ap.add_argument("--out", default="bench_kmeans.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", default="4,5,6,7,8,9,10,11")
    ap.add_argument("--n-init", type=int, default=30)
    ap.add_argument("--max-iter", type=int, default=300)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--repeats", type=int, default=None, help="timed calls after the first (default 3, small 1)")
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--minilm-layers", default="2,3,4,5")
    ap.add_argument("--minilm-k", type=int, default=384)
    ap.add_argument("--minilm-n-init", type=int, default=None)
    ap.add_argument("--minilm-max-iter", type=int, default=None)
    ap.add_argument("--peer", nargs="?", const=str(PEER), default=None,
                    help=f"run the scikit-learn peer on the same data; a bare --peer runs the in-repo {PEER_REL}")
    ap.add_argument("--peer-layers", default=None, help="layers for the peer (default: the first of --layers)")
    ap.add_argument("--peer-threads", type=int, default=0, help="limit the peer's BLAS/OpenMP threads (0: leave)")
    ap.add_argument("--peer-result", help="an existing peer result.json on the same data, instead of running it")
    ap.add_argument("--compilation-cache", metavar="DIR", help="JAX persistent compilation cache: a second "
                    "process then skips XLA compilation (H100: first call 15.0 s cold → 0.56 s warm)")
    ap.add_argument("--write-data", metavar="DIR", help="only write the peer's safetensors data for --layers")
    args = ap.parse_args(argv)

    sizes = {"d": 32, "D": 128, "k": 32} if args.small else {"d": 768, "D": 3072, "k": 768}
    if args.write_data:
        write_peer_checkpoint(args.write_data, harness.parse_layers(args.layers), args.seed,
                              sizes["d"], sizes["D"])
        print(f"wrote {args.write_data}/model.safetensors")
        return
    if args.repeats is None:
        args.repeats = 1 if args.small else 3
    if args.minilm_n_init is None:
        args.minilm_n_init = 1 if args.small else args.n_init
    if args.minilm_max_iter is None:
        args.minilm_max_iter = 20 if args.small else args.max_iter
    if args.peer_layers is None:
        args.peer_layers = str(harness.parse_layers(args.layers)[0])

    import jax
    if args.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    dev = harness.device()
    result = {"benchmark": "kmeans", "device": {k: dev[k] for k in ("platform", "kind", "count")},
              "jax": dev["jax"], "versions": harness.versions(), "small": args.small, "compilation_cache": args.compilation_cache,
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "sizes": sizes, "seed": args.seed,
              "data": "random roberta-base-shaped blocks: layer l from numpy default_rng([seed, l]), "
                      "W1 (D,d), b1 (D,), W2 (d,D), b2 (d,) i.i.d. N(0, 0.02) in that order, float32",
              "jax_results": run_jax(args, sizes)}
    if args.peer or args.peer_result:
        if args.peer_result:
            peer = json.loads(Path(args.peer_result).read_text())
        else:
            with tempfile.TemporaryDirectory() as wd:
                peer = run_peer(args, sizes, wd)
        if peer.get("k") != sizes["k"] or peer.get("n_init") != args.n_init:
            print(f"warning: peer ran k={peer.get('k')}, n_init={peer.get('n_init')}", file=sys.stderr)
        result["peer"] = peer
        result["comparison"] = compare(result["jax_results"], peer)
        print("comparison", json.dumps(result["comparison"], indent=1), flush=True)
    out = harness.write_json(args.out, result, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
