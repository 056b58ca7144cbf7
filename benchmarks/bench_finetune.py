"""Fine-tuning efficiency (issue 10 item 3): step time, tokens/s and peak device memory
of the full model vs the compressed one, ntkfuse against the PyTorch peer
(`benchmarks/peers/torch_finetune.py`), run side by side in one invocation.

Shapes as the peer builds them, random weights and random token ids (only speed and
memory are measured): roberta-base sequence classifier (vocab 50265, 514 positions,
type_vocab 1, pad 1, 2 labels; batch 32 × 128) and gpt2 124M LM (batch 8 × 128).
Compressed = the MLPs of --layers (4-11) narrowed to --width (768), as
  dense  — a width-k DenseMLP (the peer's shape: what prune/sketch/cluster produce),
  fusion — a FusedMLP (MLP Fusion, the paper's method: the same matmuls plus the fixed
           diag(n) scale); k-means runs on the host CPU before timing, so its memory
           never counts and its quality (1 restart, 10 iterations) does not matter.
Step: the fine-tuning package's jitted train step (`ntkfuse.finetune.train.steps`:
value_and_grad, AdamW betas 0.9/0.98, eps 1e-6, weight decay 0.1 off biases/LayerNorm,
linear schedule with 6% warm-up, global-norm clipping 1.0 as the peer clips; params and
optimizer state donated), dropout on (the peer trains in train mode), one fixed batch
resident on the device, each step ended by `block_until_ready` (the peer synchronises).
  fp32 — `jax_default_matmul_precision="highest"` (no TF32; the peer turns TF32 off).
  bf16 — `TrainConfig(compute_dtype="bfloat16")`: fp32 master params cast to bfloat16
         inside the jitted step (gradients arrive in fp32 through the cast), as
         torch.autocast computes matmuls in bf16 from fp32 weights.
--remat dots stores only the layers' un-batched matmul outputs and recomputes the
attention probabilities and elementwise ops in the backward pass (cfg.remat).
Every ntkfuse row runs in a fresh subprocess, so `peak_bytes_in_use` is that row's own;
the peer resets its peak between its full and compressed rows. GiB = 2**30 on both sides.

Timing, rates, device/version records, peak memory and the JSON writer are
`benchmarks.harness`'s. One JSON (--out): per (model, dtype) the rows of both sides, the
ratios (speedup = peer median / ntkfuse median; memory = ntkfuse peak / peer peak), the
compressed-vs-full savings of both, and the issue's targets checked (only when the peer
ran the same shapes, i.e. not with --small).

GPU (one line; the in-repo peer benchmarks/peers/torch_finetune.py runs unless --peer says otherwise):
    python benchmarks/bench_finetune.py --out results/bench_finetune.json
CPU smoke test (1-layer tiny models, fp32, full and fusion, rows in-process, no peer):
    python benchmarks/bench_finetune.py --small --out /tmp/bench_finetune_small.json
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

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PEER_CANDIDATES = (ROOT / "benchmarks" / "peers" / "torch_finetune.py",)
MODELS = ("roberta", "gpt2")
BATCH = {"roberta": 32, "gpt2": 8}
KINDS = ("full", "dense", "fusion")
DTYPES = ("fp32", "bf16")
TARGETS = {"fp32": 1.3, "bf16": 2.0}        # minimum speedup over the peer, same batch
GiB = 2 ** 30
REMATS = ("none", "dots", "layer")
SMALL_LAYERS = 1                             # --small: tiny 1-layer models, d = 64, D = 256


# ----------------------------------------------------------------------------- one row (subprocess)


def model_config(model: str, small: bool):
    """ModelConfig from the same transformers config the peer builds (dropout rates included);
    --small: a tiny config of the same family."""
    from transformers import GPT2Config, RobertaConfig

    from ntkfuse.models import ModelConfig
    if model == "roberta":
        size = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=SMALL_LAYERS, num_attention_heads=4,
                    vocab_size=500, max_position_embeddings=130) if small else {}
        hf = RobertaConfig(**{"vocab_size": 50265, "max_position_embeddings": 514, "type_vocab_size": 1,
                              "pad_token_id": 1, "num_labels": 2, **size})
    else:
        size = dict(n_embd=64, n_layer=SMALL_LAYERS, n_head=4, vocab_size=500, n_positions=128, bos_token_id=0,
                    eos_token_id=0) if small else {}
        hf = GPT2Config(**size)
    return ModelConfig.from_hf_config(hf.to_dict(), name=f"{model}{'-small' if small else ''}")


def make_step(cfg, task_kind: str, tc, total: int, dtype: str):
    """(optimizer, the library's jitted train step) with the row's compute dtype."""
    from ntkfuse.finetune import train
    tx, step, _ = train.steps(cfg, task_kind, tc.replace(compute_dtype=COMPUTE[dtype]), total)
    return tx, step


COMPUTE = {"fp32": "float32", "bf16": "bfloat16"}
# fp32 rows' matmul algorithm (jax_default_matmul_precision): true fp32 FMAs, or XLA's 6/9-product bf16
# splits of fp32 operands (fp32-level accuracy on bf16 tensor cores; neither is TF32)
FP32_MATMUL = {"highest": "highest", "bf16x6": "BF16_BF16_F32_X6", "bf16x9": "BF16_BF16_F32_X9"}


def run_row(spec: dict) -> dict:
    """Time one (model, dtype, kind) row in this process; returns its JSON row."""
    import jax
    precision = FP32_MATMUL[spec.get("fp32_matmul", "highest")] if spec["dtype"] == "fp32" else None
    with jax.default_matmul_precision(precision):
        return _run_row(spec)


def _run_row(spec: dict) -> dict:
    import jax
    import numpy as np

    from ntkfuse.compress import compress
    from ntkfuse.finetune.train import TrainConfig
    from ntkfuse.models import init_params
    cfg = model_config(spec["model"], spec["small"])
    if spec["scan"]:
        cfg = cfg.replace(scan_layers=True)
    task_kind = "generation" if cfg.is_decoder else "classification"
    t0 = time.perf_counter()
    with jax.default_device(jax.devices("cpu")[0]):  # init and k-means off the device: not in its peak
        params = init_params(cfg, jax.random.PRNGKey(spec["seed"]))
        if spec["kind"] != "full":
            method = "prune" if spec["kind"] == "dense" else "fusion"
            opts = {"n_init": 1, "max_iter": 10} if method == "fusion" else {}
            params = compress(cfg, params, method, spec["layers"], spec["width"], jax.random.PRNGKey(1), **opts)
        params = jax.block_until_ready(params)
    build_s = time.perf_counter() - t0
    kinds = sorted({type(lp["mlp"]).__name__ for lp in params["layers"]})
    dev = jax.devices()[0]
    params = jax.device_put(params, dev)
    b, t = spec["batch"], spec["seq"]
    total = max(spec["warmup"], 1) + spec["steps"]    # the first step (compilation) is always untimed
    tc = TrainConfig(lr=2e-5, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, warmup=0.06, clip=1.0,
                     batch_size=b, max_length=t, prng_impl=spec.get("prng", "rbg"),
                     remat=spec.get("remat") or "none")
    tx, step = make_step(cfg, task_kind, tc, total, spec["dtype"])
    # Committed to the device like the step's outputs: an uncommitted leaf (optax's step count)
    # would make the second call compile again.
    opt_state = jax.device_put(tx.init(params), dev)
    rng = np.random.default_rng(spec["seed"])
    batch = {"input_ids": rng.integers(3, cfg.vocab_size, (b, t)).astype(np.int32),
             "attention_mask": np.ones((b, t), np.int32), "weight": np.ones((b,), np.float32)}
    if task_kind == "generation":
        batch["target_mask"] = np.ones((b, t), np.int32)
    else:
        batch["labels"] = rng.integers(0, 2, (b,)).astype(np.int32)
    batch = jax.device_put(batch, dev)
    from ntkfuse.finetune.train import dropout_key
    keys = list(jax.device_put(jax.random.split(dropout_key(tc.replace(seed=spec["seed"])), total), dev))
    if spec.get("no_dropout"):
        keys = [None] * total
    # The step's own footprint (arguments + temporaries + outputs not aliased to donated inputs),
    # from XLA's buffer assignment: unlike the process peak it excludes compile-time autotuning.
    mem = step.lower(params, opt_state, batch, keys[0]).compile().memory_analysis()
    step_bytes = None if mem is None else int(mem.argument_size_in_bytes + mem.temp_size_in_bytes
                                              + mem.output_size_in_bytes - mem.alias_size_in_bytes)
    from ntkfuse.compress.accounting import param_count
    n_params = param_count(params)   # fixed fields (fusion's counts) are not parameters
    state = {"params": params, "opt": opt_state, "i": 0}
    del params, opt_state            # donated at the first step: only `state` holds them

    def one_step():
        state["params"], state["opt"], m = step(state["params"], state["opt"], batch, keys[state["i"]])
        state["i"] += 1
        return state["params"], state["opt"], m

    timing = harness.time_calls(one_step, spec["steps"], warmup=max(spec["warmup"], 1))
    peak = harness.peak_memory_bytes()
    return {"model": spec["model"], "dtype": spec["dtype"], "kind": spec["kind"],
            "width": "full" if spec["kind"] == "full" else spec["width"], "mlp_kinds": kinds,
            "trainable_params": n_params, "median_step_s": timing.median_s,
            "tokens_per_s": harness.rate(b * t, timing.median_s), "first_step_s": timing.first_s,
            "times_s": timing.times, "final_loss": float(timing.out[2]["loss"]),
            "peak_mem_gb": None if peak is None else peak / GiB,
            "step_mem_gb": None if step_bytes is None else step_bytes / GiB, "build_s": build_s,
            "prng": tc.prng_impl, "remat": tc.remat, "dropout": not spec.get("no_dropout", False),
            "fp32_matmul": spec.get("fp32_matmul", "highest") if spec["dtype"] == "fp32" else None}


# ----------------------------------------------------------------------------- driver


def _subprocess_row(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--row", json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        raise harness.BenchError(f"row {spec['model']}/{spec['dtype']}/{spec['kind']} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_peer(peer: Path, args, model: str, dtype: str, batch: int, workdir: Path) -> dict:
    out = workdir / f"peer_{model}_{dtype}"
    cmd = [sys.executable, str(peer), "--model", model, "--batch", str(batch), "--seq", str(args.seq),
           "--layers", args.layers, "--width", str(args.width), "--dtype", dtype, "--warmup", str(args.warmup),
           "--steps", str(args.steps), "--seed", str(args.seed), "--out", str(out)]
    print("peer:", " ".join(cmd), flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise harness.BenchError(f"peer failed ({' '.join(cmd)}):\n{res.stderr[-3000:]}")
    return json.loads((out / "result.json").read_text())


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def compare(ours: dict, peer: dict | None, dtype: str, comparable: bool) -> dict:
    """Speedup, memory ratio and compressed-vs-full savings of one (model, dtype); the
    targets only when the peer ran the same shapes (`comparable`)."""
    def saving(full, comp, key):
        return None if full.get(key) is None or comp.get(key) is None else 1 - comp[key] / full[key]

    out = {"ntkfuse_saving": {k: {"time": saving(ours["full"], ours[k], "median_step_s"),
                                  "memory": saving(ours["full"], ours[k], "peak_mem_gb")}
                              for k in ours if k != "full"}}
    if peer is None:
        return out
    prow = {"full": peer["rows"][0], "compressed": peer["rows"][1]}
    out["peer_saving"] = {"time": saving(prow["full"], prow["compressed"], "median_step_s"),
                          "memory": saving(prow["full"], prow["compressed"], "peak_mem_gb")}
    out["vs_peer"] = {}
    checks = {}
    for k, row in ours.items():
        p = prow["full" if k == "full" else "compressed"]
        speed = _ratio(p["median_step_s"], row["median_step_s"])
        mem = _ratio(row.get("peak_mem_gb"), p.get("peak_mem_gb"))
        out["vs_peer"][k] = {"speedup": speed, "memory_ratio": mem}
        checks[f"{k}: speedup >= {TARGETS[dtype]}"] = None if speed is None else speed >= TARGETS[dtype]
        checks[f"{k}: peak memory <= peer"] = None if mem is None else mem <= 1.0
        if k != "full":
            for what in ("time", "memory"):
                a, b = out["ntkfuse_saving"][k][what], out["peer_saving"][what]
                checks[f"{k}: {what} saving >= peer's"] = None if a is None or b is None else a >= b
    out["targets_met"] = checks if comparable else "not checked: the peer ran other model shapes (--small)"
    return out


def find_peer(arg: str | None, small: bool) -> Path | None:
    if arg == "none" or (small and arg is None):
        return None
    if arg is not None:
        p = Path(arg)
        if not p.is_file():
            raise harness.BenchError(f"--peer {arg}: no such file")
        return p
    for p in PEER_CANDIDATES:
        if p.is_file():
            return p
    raise harness.BenchError(f"peer script not found at {' or '.join(map(str, PEER_CANDIDATES))}; give --peer PATH "
                     "(or --peer none)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma list of roberta, gpt2")
    ap.add_argument("--dtypes", default=None, help="comma list of fp32, bf16 (default both; fp32 with --small)")
    ap.add_argument("--kinds", default=None, help="comma list of full, dense, fusion (default all; full,fusion "
                                                  "with --small)")
    ap.add_argument("--batch", type=int, default=None, help="default: 32 roberta, 8 gpt2 (2 with --small)")
    ap.add_argument("--seq", type=int, default=None, help="default 128 (16 with --small)")
    ap.add_argument("--layers", default=None, help="compressed layers, default 4-11 (0 with --small)")
    ap.add_argument("--width", type=int, default=None, help="compressed MLP width, default 768 (32 with --small)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (compilation), default 5 (1 --small)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps, default 20 (3 --small)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scan", action="store_true", help="run the layer stack as lax.scan (cfg.scan_layers)")
    ap.add_argument("--remat", default="dots",
                    help="rematerialisation (TrainConfig.remat): dots (default, as fine-tuning; store the layers' un-batched matmul "
                         "outputs, recompute attention probabilities and elementwise ops), none (store every activation), "
                         "layer (store layer inputs)")
    ap.add_argument("--prng", default="rbg", help="PRNG of the dropout masks: rbg (default), unsafe_rbg, "
                                                  "threefry2x32 (TrainConfig.prng_impl)")
    ap.add_argument("--fp32-matmul", default="highest",
                    help="matmul algorithm of the fp32 rows: highest (default: fp32 FMAs, no TF32), bf16x6 or bf16x9 "
                         "(XLA's BF16_BF16_F32_X6/X9: fp32 operands split into bf16 parts on the tensor cores, "
                         "fp32-level accuracy)")
    ap.add_argument("--no-dropout", action="store_true", help="no dropout (diagnosis: the RNG's share of a step)")
    ap.add_argument("--peer", default=None, help="path of the peer script, or 'none' "
                                                 "(default: benchmarks/peers/torch_finetune.py; none with --small)")
    harness.add_small(ap, "CPU smoke test: 1-layer tiny models, batch 2 x 16, fp32, full and fusion, "
                          "rows in-process, no peer unless --peer is given")
    ap.add_argument("--out", default="bench_finetune.json", help="result JSON file")
    ap.add_argument("--row", help=argparse.SUPPRESS)   # internal: run one row, print its JSON
    args = ap.parse_args(argv)
    if args.row:
        print(json.dumps(run_row(json.loads(args.row))))
        return None

    from ntkfuse.validate import check_layers, check_positive, check_width
    err = harness.BenchError
    small = args.small
    defaults = dict(seq=16 if small else 128, layers="0" if small else "4-11", width=32 if small else 768,
                    warmup=1 if small else 5, steps=3 if small else 20, dtypes="fp32" if small else ",".join(DTYPES),
                    kinds="full,fusion" if small else ",".join(KINDS))
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    models = [m for m in args.models.split(",") if m]
    dtypes = [d for d in args.dtypes.split(",") if d]
    kinds = [k for k in args.kinds.split(",") if k]
    for name, values, known in (("model", models, MODELS), ("dtype", dtypes, DTYPES), ("kind", kinds, KINDS)):
        harness.check_choices(name, values, known)
    from ntkfuse.finetune.train import PRNG_IMPLS
    harness.check_choices("prng", [args.prng], PRNG_IMPLS)
    harness.check_choices("fp32-matmul", [args.fp32_matmul], tuple(FP32_MATMUL))
    if "full" not in kinds:
        kinds.insert(0, "full")   # savings are relative to the full model
    for name in ("seq", "width", "steps"):
        check_positive(name, getattr(args, name), integer=True, error=err)
    check_positive("warmup", args.warmup, integer=True, allow_zero=True, error=err)
    layers = check_layers(harness.parse_layers(args.layers), SMALL_LAYERS if small else 12, error=err)
    check_width(args.width, 256 if small else 3072, error=err)   # both models: D = 4d
    peer = find_peer(args.peer, small)
    comparable = peer is not None and not small
    harness.check_choices("remat", [args.remat], REMATS)

    result = {"benchmark": "finetune", "small": small, "device": harness.device(), "versions": harness.versions(),
              "settings": {"seq": args.seq, "layers": layers, "width": args.width, "warmup": args.warmup,
                           "steps": args.steps, "seed": args.seed, "scan_layers": args.scan,
                           "remat": args.remat, "peer": None if peer is None else str(peer),
                           "bf16": "TrainConfig(compute_dtype='bfloat16'): fp32 master params cast to bfloat16 "
                                   "inside the jitted step", "prng": args.prng, "dropout": not args.no_dropout,
                           "fp32": f"jax_default_matmul_precision={FP32_MATMUL[args.fp32_matmul]} (no TF32)",
                           "fp32_matmul": args.fp32_matmul},
              "comparable_with_peer": comparable, "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            batch = args.batch or (2 if small else BATCH[model])
            for dtype in dtypes:
                ours = {}
                for kind in kinds:
                    spec = {"model": model, "dtype": dtype, "kind": kind, "small": small, "batch": batch,
                            "seq": args.seq, "layers": layers, "width": args.width, "warmup": args.warmup,
                            "steps": args.steps, "seed": args.seed, "scan": args.scan, "prng": args.prng,
                            "remat": args.remat, "no_dropout": args.no_dropout, "fp32_matmul": args.fp32_matmul}
                    # A fresh process per row keeps device peaks apart; --small (CPU, no peak) saves the starts.
                    ours[kind] = run_row(spec) if small else _subprocess_row(spec)
                    r = ours[kind]
                    mem = "n/a" if r["peak_mem_gb"] is None else f"{r['peak_mem_gb']:.2f} GiB"
                    step_mem = "n/a" if r.get("step_mem_gb") is None else f"{r['step_mem_gb']:.2f} GiB"
                    print(f"ntkfuse {model} {dtype} {kind}: {1e3 * r['median_step_s']:.1f} ms/step, "
                          f"{r['tokens_per_s']:.0f} tok/s, peak {mem} (step {step_mem})", flush=True)
                peer_res = run_peer(peer, args, model, dtype, batch, Path(tmp)) if peer else None
                entry = {"model": model, "dtype": dtype, "batch": batch, "seq": args.seq, "ntkfuse": ours,
                         "peer": peer_res, **compare(ours, peer_res, dtype, comparable)}
                result["results"].append(entry)
                harness.write_json(args.out, result, indent=1)   # after every (model, dtype): partial results survive
    print(json.dumps([{k: e[k] for k in e if k not in ("ntkfuse", "peer")} for e in result["results"]], indent=1))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
