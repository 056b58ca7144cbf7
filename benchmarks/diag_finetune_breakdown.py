"""Where a fine-tuning step's time goes (diagnosis for bench_finetune): forward loss,
forward+backward, the AdamW update alone, and the whole step, each jitted and timed
(median of 10 after warm-up) on roberta-base shapes, batch 32 x 128, random weights.

    python benchmarks/diag_finetune_breakdown.py --dtype bf16 --out diag.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import harness  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dtype", default="bf16", choices=("fp32", "bf16"))
    ap.add_argument("--model", default="roberta", choices=("roberta", "gpt2"))
    ap.add_argument("--small", action="store_true", help="tiny model, batch 2 x 16 (CPU smoke test)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from benchmarks.bench_finetune import BATCH, COMPUTE, model_config
    from ntkfuse.finetune import optim, train
    from ntkfuse.models import init_params
    cfg = model_config(args.model, args.small)
    kind = "generation" if cfg.is_decoder else "classification"
    b, t = (2, 16) if args.small else (BATCH[args.model], 128)
    tc = train.TrainConfig(batch_size=b, max_length=t, clip=1.0, compute_dtype=COMPUTE[args.dtype])
    params = init_params(cfg, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batch = {"input_ids": rng.integers(3, cfg.vocab_size, (b, t)).astype(np.int32),
             "attention_mask": np.ones((b, t), np.int32), "weight": np.ones((b,), np.float32)}
    if kind == "generation":
        batch["target_mask"] = np.ones((b, t), np.int32)
    else:
        batch["labels"] = rng.integers(0, 2, (b,)).astype(np.int32)
    batch = jax.device_put(batch)
    key = train.dropout_key(tc)
    precision = "highest" if args.dtype == "fp32" else None
    out = {"dtype": args.dtype, "model": args.model, "device": harness.device()}
    with jax.default_matmul_precision(precision):
        cast = lambda p: train._compute(p, tc.compute_dtype)   # noqa: E731
        fwd = jax.jit(lambda p, bt, k: train.loss(cfg, kind, cast(p), bt, k))
        fwd_nodrop = jax.jit(lambda p, bt: train.loss(cfg, kind, cast(p), bt, None))
        grad = jax.jit(jax.value_and_grad(lambda p, bt, k: train.loss(cfg, kind, cast(p), bt, k)))
        tx = optim.optimizer(tc, 100)
        opt_state = jax.device_put(tx.init(params))
        upd = jax.jit(lambda g, s, p: tx.update(g, s, p))
        g0 = grad(params, batch, key)[1]
        for name, fn in (("forward_loss", lambda: fwd(params, batch, key)),
                         ("forward_loss_no_dropout", lambda: fwd_nodrop(params, batch)),
                         ("value_and_grad", lambda: grad(params, batch, key)),
                         ("adamw_update_only", lambda: upd(g0, opt_state, params))):
            tm = harness.time_calls(fn, 10, warmup=2)
            out[name + "_ms"] = 1e3 * tm.median_s
            print(f"{name}: {1e3 * tm.median_s:.2f} ms (first {tm.first_s:.1f} s)", flush=True)
        tx_, step, _ = train.steps(cfg, kind, tc, 100)
        state = {"p": jax.tree_util.tree_map(lambda a: a.copy(), params), "s": opt_state}

        def one():
            state["p"], state["s"], m = step(state["p"], state["s"], batch, key)
            return m
        tm = harness.time_calls(one, 10, warmup=2)
        out["train_step_ms"] = 1e3 * tm.median_s
        print(f"train_step: {1e3 * tm.median_s:.2f} ms", flush=True)
        hlo = grad.lower(params, batch, key).compile().as_text()
        ops = {}
        for line in hlo.splitlines():
            line = line.strip()
            for op in ("custom-call", "fusion", "scatter", "gather", "sort", "while", "rng-bit-generator",
                       "convolution", "dot"):
                if f" {op}(" in line:
                    ops[op] = ops.get(op, 0) + 1
        out["grad_hlo_op_counts"] = ops
        print("value_and_grad HLO op counts:", ops, flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
