#!/usr/bin/env python
"""Surrogate-fitting throughput: ntkfuse (one jitted step, vmapped over layers) vs the
same fit written as a plain PyTorch loop (per layer nn.Sequential(Linear, GELU,
Linear), AdamW, MSE), same run, same shapes, batch size, steps and initial weights.

Setup (default = full size, roberta-base's 8 compressed layers): teacher blocks
d=768, D=3072 with N(0, 0.02) weights; inputs are Gaussian tokens standing in for
collected activations, targets the teacher outputs; surrogates are width-768
bottleneck MLPs (exact GELU). Throughput = layers × batch × steps / seconds
(tokens/s over all layers), median over --repeats timed runs after a warm-up run
(compilation excluded). Precision rows: "highest" = true float32 (JAX matmul
precision "highest", torch allow_tf32=False); "tf32" = JAX default precision and
torch allow_tf32=True (differs from "highest" only on GPUs with TF32).

    python scripts/bench_surrogate.py --small --out bench_surrogate_small.json   # CPU
    python scripts/bench_surrogate.py --out bench_surrogate.json                  # GPU, full size
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="CPU-sized: d=128, D=512, k=128, fewer tokens/steps")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--d", type=int, default=None)
    p.add_argument("--D", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--tokens", type=int, default=None, help="collected tokens per layer")
    p.add_argument("--batch-size", type=int, default=None, help="tokens per layer per step")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", default=None, help="comma list of highest,tf32 (default: highest on CPU, both on GPU)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's own; on an oversubscribed CPU 1 is often faster)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_surrogate.json")
    a = p.parse_args(argv)
    small = dict(d=128, D=512, width=128, tokens=4096, batch_size=256, steps=30)
    full = dict(d=768, D=3072, width=768, tokens=32768, batch_size=1024, steps=100)
    for k, v in (small if a.small else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    for k in ("layers", "d", "D", "width", "tokens", "batch_size", "steps", "repeats"):
        if getattr(a, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1")
    if a.batch_size > a.tokens:
        p.error(f"--batch-size {a.batch_size} exceeds --tokens {a.tokens}")
    return a


def make_problem(a):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from ntkfuse.models import DenseMLP, activation_fn
    from ntkfuse.surrogate import random_bottleneck
    key = jax.random.PRNGKey(a.seed)
    kt, kx, ks = jax.random.split(key, 3)
    act = activation_fn("gelu")
    X, Y, init = [], [], []
    for l in range(a.layers):
        k1, k2, k3, k4 = jax.random.split(jax.random.fold_in(kt, l), 4)
        t = DenseMLP(0.02 * jax.random.normal(k1, (a.D, a.d)), 0.02 * jax.random.normal(k2, (a.D,)),
                     0.02 * jax.random.normal(k3, (a.d, a.D)), 0.02 * jax.random.normal(k4, (a.d,)))
        x = jax.random.normal(jax.random.fold_in(kx, l), (a.tokens, a.d))
        with jax.default_matmul_precision("highest"):
            X.append(np.asarray(x))
            Y.append(np.asarray(t(x, act)))
        init.append(random_bottleneck(a.d, a.width, jax.random.fold_in(ks, l)))
    return np.stack(X), np.stack(Y), init


def bench_jax(a, X, Y, init, precision):
    import jax
    from ntkfuse.surrogate import FitConfig, fit_blocks
    fc = FitConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup_steps=0, holdout=0.0, progress=False,
                   seed=a.seed)
    prec = "highest" if precision == "highest" else "default"
    import jax.numpy as jnp
    X, Y = jax.device_put(jnp.asarray(X)), jax.device_put(jnp.asarray(Y))   # on device once, as torch's are
    times, final = [], None
    with jax.default_matmul_precision(prec):
        for r in range(a.repeats + 1):
            t0 = time.perf_counter()
            res = fit_blocks(init, X, Y, fc, "gelu")
            jax.block_until_ready(res.blocks)
            if r:
                times.append(time.perf_counter() - t0)
            final = res
    return times, final


def bench_torch(a, X, Y, init, precision):
    import numpy as np
    import torch
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.manual_seed(a.seed)
    Xt = torch.tensor(X, device=dev)
    Yt = torch.tensor(Y, device=dev)

    def run():
        models, opts = [], []
        for b in init:
            m = torch.nn.Sequential(torch.nn.Linear(a.d, a.width), torch.nn.GELU(), torch.nn.Linear(a.width, a.d)).to(dev)
            with torch.no_grad():
                m[0].weight.copy_(torch.tensor(np.asarray(b.w1)))
                m[0].bias.copy_(torch.tensor(np.asarray(b.b1)))
                m[2].weight.copy_(torch.tensor(np.asarray(b.w2)))
                m[2].bias.copy_(torch.tensor(np.asarray(b.b2)))
            models.append(m)
            opts.append(torch.optim.AdamW(m.parameters(), lr=a.lr, weight_decay=0.0))
        loss_fn = torch.nn.MSELoss()
        per_epoch = a.tokens // a.batch_size
        perm = None
        for step in range(a.steps):
            if step % per_epoch == 0:
                perm = torch.randperm(a.tokens, device=dev)
            idx = perm[(step % per_epoch) * a.batch_size:(step % per_epoch + 1) * a.batch_size]
            for l, (m, o) in enumerate(zip(models, opts)):
                o.zero_grad(set_to_none=True)
                loss = loss_fn(m(Xt[l, idx]), Yt[l, idx])
                loss.backward()
                o.step()
        if dev == "cuda":
            torch.cuda.synchronize()
        return loss.item()

    times = []
    for r in range(a.repeats + 1):
        t0 = time.perf_counter()
        run()
        if r:
            times.append(time.perf_counter() - t0)
    return times, dev


def main(argv=None):
    a = parse_args(argv)
    import jax
    import torch
    on_gpu = jax.devices()[0].platform == "gpu"
    precisions = (a.precision.split(",") if a.precision else (["highest", "tf32"] if on_gpu else ["highest"]))
    bad = [p for p in precisions if p not in ("highest", "tf32")]
    if bad:
        print(f"bench_surrogate.py: error: --precision {bad}: valid are highest, tf32", file=sys.stderr)
        return 2
    if a.torch_threads is not None:
        if a.torch_threads < 1:
            print("bench_surrogate.py: error: --torch-threads must be >= 1", file=sys.stderr)
            return 2
        torch.set_num_threads(a.torch_threads)
    X, Y, init = make_problem(a)
    tokens = a.layers * a.batch_size * a.steps
    rows = []
    for prec in precisions:
        tj, _ = bench_jax(a, X, Y, init, prec)
        tt, dev = bench_torch(a, X, Y, init, prec)
        mj, mt = statistics.median(tj), statistics.median(tt)
        rows.append({"precision": prec, "ntkfuse_s": tj, "torch_s": tt, "ntkfuse_median_s": mj, "torch_median_s": mt,
                     "ntkfuse_tokens_per_s": tokens / mj, "torch_tokens_per_s": tokens / mt,
                     "speedup_ntkfuse_over_torch": mt / mj})
        print(f"{prec:8s} ntkfuse {tokens / mj:12.0f} tok/s   torch {tokens / mt:12.0f} tok/s   ratio {mt / mj:.2f}",
              flush=True)
    out = {"benchmark": "surrogate fitting throughput", "sizes": {k: getattr(a, k) for k in
           ("layers", "d", "D", "width", "tokens", "batch_size", "steps", "repeats", "lr")},
           "tokens_per_run": tokens, "jax_device": str(jax.devices()[0]), "torch_device": dev,
           "jax_version": jax.__version__, "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
           "timing": "median wall time of repeats after one warm-up run (compile excluded); data on the device "
                     "beforehand for both; each run includes building the surrogates/optimizer state",
           "rows": rows}
    tmp = f"{a.out}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
