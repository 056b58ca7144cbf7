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
torch allow_tf32=True (differs from "highest" only on GPUs with TF32); "bf16" =
float32 master weights and AdamW, forward/backward in bfloat16 with float32
accumulation in the matmuls and a float32 loss (ntkfuse FitConfig(compute_dtype=
"bfloat16"): params and inputs cast to bf16 inside the step; torch:
torch.autocast(bfloat16) around forward + loss).

Timed region (both frameworks): the fit itself, from the initial surrogates to the
fitted weights, i.e. stacking/building the blocks, optimizer init, all steps, and a
device sync on the result. The collected tokens and initial weights are on the
device before timing for both; no host<->device transfer is timed. ntkfuse is timed
twice: as shipped (`block_steps`=256: all 100 steps in one jitted lax.scan, batches
drawn on the device) and with `block_steps=1` (one dispatch per step, the previous
behaviour), so the effect of the scan is measured in the same run.

Prediction, written before measuring on the GPU. One step = 8 layers x 1024 tokens x
(forward + backward) of two 768x768 matmuls = 58 GFLOP. Previous H100 measurement:
~11 ms/step for both frameworks and both precisions, far above compute, i.e. per-step
overhead. With the scan that overhead goes away for ntkfuse and the step costs its
device time: ~1.2-2.5 ms in true fp32 (25-50 TFLOP/s), ~0.3-0.5 ms in TF32 and
~0.2-0.4 ms in bf16 (tensor cores; the batch gather, GELU and AdamW over 9.4M params
add ~0.1 ms). So ntkfuse full size: highest ~0.15-0.25 s/run (5-7x faster than
before), tf32 ~0.04-0.06 s, bf16 ~0.03-0.05 s (15-30x); the torch plain loop keeps its
per-step Python/launch overhead (8 modules x forward, backward, AdamW) at ~1.0-1.3 s
in every precision. Predicted ratio ntkfuse/torch: ~5x highest, ~20x tf32 and bf16.
If the old 11 ms/step were instead device time, the block_steps=1 row would be as
fast as the scan row. On the shared 2-core CPU (--small) compute dominates and the
scan should gain little (<1.3x over block_steps=1).
Measured results and how they compare with this prediction: docs/surrogates.md.

    python benchmarks/bench_surrogate.py --small --out bench_surrogate_small.json   # CPU
    python benchmarks/bench_surrogate.py --out bench_surrogate.json                  # GPU, full size
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_small(p, "CPU-sized: d=128, D=512, k=128, fewer tokens/steps")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--d", type=int, default=None)
    p.add_argument("--D", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--tokens", type=int, default=None, help="collected tokens per layer")
    p.add_argument("--batch-size", type=int, default=None, help="tokens per layer per step")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", default=None,
                   help="comma list of highest,tf32,bf16 (default: highest on CPU, all three on GPU)")
    p.add_argument("--no-per-step", action="store_true", help="skip the ntkfuse block_steps=1 timing")
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
    from ntkfuse.validate import check_positive
    for k in ("layers", "d", "D", "width", "tokens", "batch_size", "steps", "repeats"):
        check_positive(f"--{k.replace('_', '-')}", getattr(a, k), integer=True, error=harness.BenchError)
    if a.batch_size > a.tokens:
        p.error(f"--batch-size {a.batch_size} exceeds --tokens {a.tokens}")
    return a


def make_problem(a):
    import jax
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


def _timed(fn, repeats):
    """(seconds of `repeats` runs after one warm-up run (compilation), last result); `fn` syncs itself."""
    t = harness.time_calls(fn, repeats, sync=harness.no_sync)
    return t.times, t.out


def bench_jax(a, X, Y, init, precision, block_steps=256):
    import jax
    from ntkfuse.surrogate import FitConfig, fit_blocks
    fc = FitConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup_steps=0, holdout=0.0, progress=False,
                   seed=a.seed, block_steps=block_steps,
                   compute_dtype="bfloat16" if precision == "bf16" else "float32")

    def run():
        res = fit_blocks(init, X, Y, fc, "gelu")
        return jax.block_until_ready(res.blocks)

    with jax.default_matmul_precision("highest" if precision == "highest" else "default"):
        return _timed(run, a.repeats)


def bench_torch(a, X, Y, init, precision):
    import contextlib
    import numpy as np
    import torch
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.manual_seed(a.seed)
    Xt = torch.tensor(X, device=dev)     # on the device before timing, like ntkfuse's
    Yt = torch.tensor(Y, device=dev)
    W = [[torch.tensor(np.asarray(getattr(b, n)), device=dev) for n in ("w1", "b1", "w2", "b2")] for b in init]
    autocast = (lambda: torch.autocast(dev, dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def run():
        models, opts = [], []
        for w1, b1, w2, b2 in W:
            m = torch.nn.Sequential(torch.nn.Linear(a.d, a.width), torch.nn.GELU(), torch.nn.Linear(a.width, a.d)).to(dev)
            with torch.no_grad():
                for t, src in zip((m[0].weight, m[0].bias, m[2].weight, m[2].bias), (w1, b1, w2, b2)):
                    t.copy_(src)
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
                with autocast():
                    loss = loss_fn(m(Xt[l, idx]), Yt[l, idx])
                loss.backward()
                o.step()
        sync()
        return models

    times, _ = _timed(run, a.repeats)
    return times, dev


def main(argv=None):
    a = parse_args(argv)
    import jax
    import torch
    on_gpu = jax.devices()[0].platform == "gpu"
    precisions = (a.precision.split(",") if a.precision else (["highest", "tf32", "bf16"] if on_gpu else ["highest"]))
    harness.check_choices("--precision", precisions, ("highest", "tf32", "bf16"))
    if a.torch_threads is not None:
        if a.torch_threads < 1:
            print("bench_surrogate.py: error: --torch-threads must be >= 1", file=sys.stderr)
            return 2
        torch.set_num_threads(a.torch_threads)
    X, Y, init = make_problem(a)
    import jax.numpy as jnp
    Xd, Yd = jax.device_put(jnp.asarray(X)), jax.device_put(jnp.asarray(Y))   # on the device before timing
    init_d = jax.device_put(init)
    jax.block_until_ready((Xd, Yd, init_d))
    tokens = a.layers * a.batch_size * a.steps
    rows = []
    for prec in precisions:
        tj, _ = bench_jax(a, Xd, Yd, init_d, prec)
        tt, dev = bench_torch(a, X, Y, init, prec)
        mj, mt = harness.Timing(0.0, tj).median_s, harness.Timing(0.0, tt).median_s
        row = {"precision": prec, "ntkfuse_s": tj, "torch_s": tt, "ntkfuse_median_s": mj, "torch_median_s": mt,
               "ntkfuse_tokens_per_s": harness.rate(tokens, mj), "torch_tokens_per_s": harness.rate(tokens, mt),
               "speedup_ntkfuse_over_torch": mt / mj}
        line = f"{prec:8s} ntkfuse {tokens / mj:12.0f} tok/s   torch {tokens / mt:12.0f} tok/s   ratio {mt / mj:.2f}"
        if not a.no_per_step:
            t1, _ = bench_jax(a, Xd, Yd, init_d, prec, block_steps=1)
            m1 = harness.Timing(0.0, t1).median_s
            row.update({"ntkfuse_per_step_s": t1, "ntkfuse_per_step_median_s": m1,
                        "ntkfuse_per_step_tokens_per_s": harness.rate(tokens, m1), "scan_speedup_over_per_step": m1 / mj})
            line += f"   (ntkfuse one dispatch/step {tokens / m1:12.0f} tok/s, scan gain {m1 / mj:.2f}x)"
        rows.append(row)
        print(line, flush=True)
    out = {"benchmark": "surrogate fitting throughput", "sizes": {k: getattr(a, k) for k in
           ("layers", "d", "D", "width", "tokens", "batch_size", "steps", "repeats", "lr")},
           "tokens_per_run": tokens, "jax_device": str(jax.devices()[0]), "torch_device": dev,
           "jax_version": jax.__version__, "device": harness.device(),
           "versions": harness.versions(torch=torch.__version__), "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
           "timing": "median wall time of repeats after one warm-up run (compile excluded). Timed: the fit only - "
                     "building/stacking the surrogates from initial weights already on the device, optimizer init, "
                     "all steps, device sync on the result. Collected tokens and initial weights are on the device "
                     "before timing for both frameworks (no host<->device transfer timed).",
           "precisions": {"highest": "float32, JAX matmul precision highest / torch allow_tf32=False",
                          "tf32": "float32 storage, JAX default matmul precision / torch allow_tf32=True",
                          "bf16": "float32 master weights + AdamW; forward/backward in bfloat16 (matmul inputs "
                                  "bf16, f32 accumulation, bf16 activations), f32 loss. ntkfuse: FitConfig("
                                  "compute_dtype='bfloat16'); torch: torch.autocast(bfloat16) around forward+loss"},
           "ntkfuse_block_steps": 256,
           "rows": rows}
    harness.write_json(a.out, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
