"""Peer: clustering the sub-MLPs (neurons) of MLP blocks with scikit-learn.

MLP Fusion views an MLP of width D as D sub-MLPs; neuron i is [W1[i, :], b1[i], W2[:, i]]
(length 2d+1). The reference code clusters them with KMeans(n_clusters=k, n_init=30,
algorithm="lloyd"); this script times exactly that for --layers of a Hugging Face
BERT/RoBERTa checkpoint directory (model.safetensors) and writes, into --out,
kmeans_layer<l>.npz (centers, labels) and result.json (seconds, inertia, iterations).

    python benchmarks/peers/sklearn_kmeans.py CHECKPOINT_DIR --layers 4,5 --k 768 --out /tmp/peer_km
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def neurons(tensors: dict, layer: int) -> np.ndarray:
    """(D, 2d+1) float32 rows [W1[i], b1[i], W2[:, i]] of one layer's MLP."""
    suffix = f"encoder.layer.{layer}.intermediate.dense.weight"
    prefix = next((k[:-len("intermediate.dense.weight")] for k in tensors if k.endswith(suffix)), None)
    if prefix is None:
        raise SystemExit(f"layer {layer}: no {suffix} in the checkpoint")
    w1 = tensors[prefix + "intermediate.dense.weight"]
    b1 = tensors[prefix + "intermediate.dense.bias"]
    w2 = tensors[prefix + "output.dense.weight"]
    return np.concatenate([w1, b1[:, None], w2.T], axis=1).astype(np.float32)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="directory holding model.safetensors")
    ap.add_argument("--layers", default="4", help="comma list of layers")
    ap.add_argument("--k", type=int, default=768, help="clusters per layer")
    ap.add_argument("--n-init", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    import sklearn
    from sklearn.cluster import KMeans

    tensors = load_file(str(Path(args.checkpoint) / "model.safetensors"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"sklearn": sklearn.__version__, "k": args.k, "n_init": args.n_init, "layers": {}}
    for layer in (int(x) for x in args.layers.split(",") if x):
        X = neurons(tensors, layer)
        t0 = time.perf_counter()
        km = KMeans(n_clusters=args.k, n_init=args.n_init, algorithm="lloyd", random_state=args.seed).fit(X)
        seconds = time.perf_counter() - t0
        np.savez(out / f"kmeans_layer{layer}.npz", centers=km.cluster_centers_, labels=km.labels_)
        result["layers"][layer] = {"seconds": seconds, "inertia": float(km.inertia_), "shape": list(X.shape),
                                   "iterations": int(km.n_iter_)}
        print(layer, result["layers"][layer], flush=True)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
