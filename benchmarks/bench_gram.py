"""The NTK engine's Gram step alone: K += G_l G_lᵀ and G_l sign(G_l)ᵀ over the leaves of G, at
roberta-base MLP shapes (N = 128 examples; layers 4-11: 16 weight leaves of 768 × 3072 and 16 bias
leaves), in several formulations, each compiled with and without XLA's Triton GEMMs.

    python benchmarks/bench_gram.py --out /tmp/gram            # GPU
    python benchmarks/bench_gram.py --small --out /tmp/gram    # CPU smoke run

Why: without Triton GEMMs (ntkfuse's default for one-shot programs, for 7x faster compiles) the
whole kernel call is ~10 % slower warm; this measures which part of that is the Gram, a skinny
product (128 × 128 output, K = 2.36 M per leaf) that cuBLAS may not split well. Every variant is
checked against a float64 Gram of the same G. Writes result.json atomically.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import harness  # noqa: E402


def variants(jax, jnp):
    hi = jax.lax.Precision.HIGHEST

    def dot_t(x, y):
        return jax.lax.dot_general(x, y, (((1,), (1,)), ((), ())), precision=hi,
                                   preferred_element_type=jnp.float32)

    def plain(leaves):
        k, s = 0.0, 0.0
        for a in leaves:
            k = k + dot_t(a, a)
            s = s + dot_t(a, jnp.sign(a))
        return k, s

    def concat(leaves):     # one product per leaf: A [A; sign A]ᵀ
        n = leaves[0].shape[0]
        out = 0.0
        for a in leaves:
            out = out + dot_t(a, jnp.concatenate([a, jnp.sign(a)], 0))
        return out[:, :n], out[:, n:]

    def splitk(pieces):     # K split into `pieces` batched products, summed after
        def f(leaves):
            k, s = 0.0, 0.0
            for a in leaves:
                n, p = a.shape
                if p % pieces or p < 1 << 16:
                    k, s = k + dot_t(a, a), s + dot_t(a, jnp.sign(a))
                    continue
                r = a.reshape(n, pieces, p // pieces)
                k = k + jnp.einsum("nbk,mbk->bnm", r, r, precision=hi).sum(0)
                s = s + jnp.einsum("nbk,mbk->bnm", r, jnp.sign(r), precision=hi).sum(0)
            return k, s
        return f

    def engine(leaves):      # what the engine runs: ntk.kernels_module._gram_add (its K split on a GPU without autotuning)
        from ntkfuse.ntk import kernels_module as km
        n = leaves[0].shape[0]
        acc = km._gram_add({k: jnp.zeros((n, n), jnp.float32) for k in ("ntk", "sign")}, leaves, leaves, ("ntk", "sign"))
        return acc["ntk"], acc["sign"]

    out = {"plain": plain, "concat": concat}
    out["engine"] = engine
    for b in (16, 64, 128, 144, 256, 288, 576, 1152):
        out[f"splitk{b}"] = splitk(b)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_small(ap, "tiny leaves on CPU")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variants", default="plain,engine,splitk128,splitk144,splitk256,splitk288,splitk576,splitk1152",
                    help="comma list, or all (plain, engine, concat, splitk<pieces> for 16, 64, 128, 144, "
                         "256, 288, 576, 1152)")
    ap.add_argument("--triton", default="plain", help="variants also run with Triton GEMMs (comma list, all or none)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    from ntkfuse.compile import NO_AUTOTUNE, autotune

    d, D, layers = (32, 128, 2) if args.small else (768, 3072, 8)
    n = 16 if args.small else args.n
    shapes = [(d * D,), (D,), (D * d,), (d,)] * layers
    keys = jax.random.split(jax.random.PRNGKey(0), len(shapes))
    leaves = [jax.random.normal(k, (n,) + s, jnp.float32) * 1e-3 for k, s in zip(keys, shapes)]
    jax.block_until_ready(leaves)

    with jax.enable_x64(True):
        f64 = jax.jit(lambda g: (g.astype(jnp.float64) @ g.astype(jnp.float64).T,
                                 g.astype(jnp.float64) @ jnp.sign(g).astype(jnp.float64).T))
        ref = [np.zeros((n, n)), np.zeros((n, n))]
        for leaf in leaves:
            for c in range(0, leaf.shape[1], 1 << 21):
                a, b = f64(leaf[:, c:c + (1 << 21)])
                ref[0] += np.asarray(a)
                ref[1] += np.asarray(b)

    vs = variants(jax, jnp)
    names = list(vs) if args.variants == "all" else args.variants.split(",")
    result = {"device": harness.device(), "versions": harness.versions(), "n": n,
              "leaves": [list(s) for s in shapes], "flop": 2 * 2 * n * n * sum(int(np.prod(s)) for s in shapes),
              "rows": {}}
    tri = set(names if args.triton == "all" else [] if args.triton == "none" else args.triton.split(","))
    for name in names:
        for mode, opts in (("cublas", NO_AUTOTUNE), ("triton", {})):
            if mode == "triton" and name not in tri:
                continue
            f = jax.jit(vs[name], compiler_options=opts) if opts else jax.jit(vs[name])
            try:
                with autotune(mode == "triton"):     # the engine's split applies only without autotuning
                    t = harness.time_calls(lambda: f(leaves), args.repeats)
            except Exception as e:  # noqa: BLE001 - reported, not fatal
                result["rows"][f"{name}/{mode}"] = {"error": str(e)[:300]}
                continue
            k, s = t.out
            row = {"first_call_s": t.first_s, "median_s": t.median_s,
                   "tflops": result["flop"] / t.median_s / 1e12,
                   "rel_vs_float64": {"ntk": float(np.linalg.norm(np.asarray(k, np.float64) - ref[0]) / np.linalg.norm(ref[0])),
                                      "sign": float(np.linalg.norm(np.asarray(s, np.float64) - ref[1]) / np.linalg.norm(ref[1]))}}
            result["rows"][f"{name}/{mode}"] = row
            print(name, mode, {k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    harness.write_json(out / "result.json", result)


if __name__ == "__main__":
    main()
