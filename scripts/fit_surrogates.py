#!/usr/bin/env python
"""Fit surrogate MLPs for chosen layers of a model and report what fitting buys.

    python scripts/fit_surrogates.py                       # MiniLM, sentiment sample, layers 2-5, width 384
    python scripts/fit_surrogates.py --kinds linear,bottleneck-fusion --steps 300 --out runs/fit
    python scripts/fit_surrogates.py --help

For every surrogate kind, all chosen layers' blocks are replaced and fitted to the
original blocks' (input, output) token pairs (METHOD.md §4). Written to --out
(atomically; rerunning with the same arguments resumes unfinished fits from their
orbax checkpoints and reuses finished kinds):
  model_<kind>/        the fitted model (ntkfuse.compress.save_compressed, orbax)
  results.json/.csv/.md  per layer and kind: held-out block error before/after fitting;
                       per kind: output error (last compressed layer, logits) and NTK
                       errors (vanilla and sign, abs and rel) before/after
  results_model.csv    the per-kind (whole model) numbers of results.md
  results.png          block error before/after per layer and kind
  plan.json/.md        with --plan-widths: sensitivity rows, greedy and knapsack plans
  parts/, ckpt/        resume state (finished kinds, orbax fit checkpoints)
See docs/surrogates.md.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import os
import sys
import time

KIND_CHOICES = ("linear", "linear_sgd", "low_rank_linear", "bottleneck-<method>", "bottleneck-random")


class UsageError(ValueError):
    pass


def parse_layers(text: str) -> list[int]:
    """ntk_compare's parser ('2-5', '4,5,6', '1-2,7'; empty ranges and repeats refused)."""
    from ntkfuse.compare import CompareError, parse_layers as parse
    try:
        return list(parse(text))
    except CompareError as e:
        raise UsageError(f"--layers: {e}") from None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm", help="ntkfuse.load name or checkpoint directory")
    p.add_argument("--data", default="sample:sentiment", help="sample:NAME, a .tsv/.csv/.jsonl file, or HF id")
    p.add_argument("--n-examples", type=int, default=None, help="use the first N examples")
    p.add_argument("--layers", default="2-5")
    p.add_argument("--width", type=int, default=384, help="bottleneck width k")
    p.add_argument("--rank", type=int, default=96, help="rank of the low-rank linear surrogate")
    p.add_argument("--kinds", default="linear,low_rank_linear,bottleneck-fusion,bottleneck-prune",
                   help=f"comma-separated, from: {', '.join(KIND_CHOICES)}")
    p.add_argument("--loss", default="mse", choices=("mse", "cosine"))
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=256, help="tokens per layer per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--holdout", type=float, default=0.15)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=None, help="cap on collected tokens")
    p.add_argument("--n-init", type=int, default=4, help="k-means restarts for fusion (reference: 30)")
    p.add_argument("--ntk-examples", type=int, default=16, help="examples in the NTK (0: skip NTK)")
    p.add_argument("--plan-widths", default="",
                   help="e.g. 96,192,384,768: also measure singleton sensitivity (one layer replaced by "
                        "--plan-method at each width) and allocate widths under --plan-budget")
    p.add_argument("--plan-method", default="prune", help="one-shot method for the sensitivity sweep")
    p.add_argument("--plan-budget", type=float, default=0.5,
                   help="budget as a fraction of the chosen layers' original MLP parameters")
    p.add_argument("--plan-metric", default="kl", choices=("kl", "output_error", "logit_error"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/fit_surrogates")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def check_args(a, methods):
    """Checks that need no model: run before anything heavy."""
    kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    valid = ["linear", "linear_sgd", "low_rank_linear", "bottleneck-random"] + [f"bottleneck-{m}" for m in methods
                                                                               if m != "magnitude"]
    unknown = [k for k in kinds if k not in valid]
    if unknown or not kinds:
        raise UsageError(f"--kinds: unknown {unknown or '(none given)'}; valid: {', '.join(valid)}")
    for name in ("steps", "batch_size", "eval_every", "max_length", "n_init", "width", "rank"):
        if getattr(a, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    if a.ntk_examples < 0 or a.checkpoint_every < 0 or a.patience < 0:
        raise UsageError("--ntk-examples, --checkpoint-every and --patience must be >= 0")
    if not 0 < a.holdout < 1:
        raise UsageError("--holdout must be in (0, 1)")
    if a.lr <= 0:
        raise UsageError("--lr must be > 0")
    layers = parse_layers(a.layers)
    plan_widths = []
    if a.plan_widths:
        try:
            plan_widths = [int(w) for w in a.plan_widths.split(",") if w.strip()]
        except ValueError:
            raise UsageError(f"--plan-widths {a.plan_widths!r}: expected integers, e.g. 96,192,384") from None
        if not plan_widths or min(plan_widths) < 1:
            raise UsageError("--plan-widths must be positive integers")
        if a.plan_method not in methods or a.plan_method == "magnitude":
            raise UsageError(f"--plan-method {a.plan_method!r}; valid: "
                             f"{', '.join(m for m in methods if m != 'magnitude')}")
        if not 0 < a.plan_budget <= 1:
            raise UsageError("--plan-budget must be in (0, 1]")
    a.plan_widths_list = plan_widths
    return layers, kinds


def check_model_args(a, cfg, layers):
    """Checks against the loaded model's shapes."""
    bad = [l for l in layers if not 0 <= l < cfg.num_layers]
    if bad:
        raise UsageError(f"--layers {bad} out of range: the model has layers 0..{cfg.num_layers - 1}")
    if a.width >= cfg.intermediate:
        raise UsageError(f"--width must be in 1..{cfg.intermediate - 1} (the MLP width is {cfg.intermediate})")
    if a.rank > cfg.hidden:
        raise UsageError(f"--rank must be in 1..{cfg.hidden}")
    if any(w >= cfg.intermediate for w in a.plan_widths_list):
        raise UsageError(f"--plan-widths must be in 1..{cfg.intermediate - 1}")
    if cfg.head != "classifier":
        raise UsageError("this script measures NTKs of a classifier's class probability; the model's head is "
                         f"{cfg.head!r}")


def write_atomic(path, data: str | bytes):
    from ntkfuse.files import atomic_write as write   # lazy: --help and argument errors stay fast
    write(path, data)


def block_error(blocks, x, y, activation):
    """Mean over tokens of ‖ŷ − y‖₂ for each layer (x, y: (L, N, d))."""
    import jax
    import jax.numpy as jnp
    from ntkfuse.models import activation_fn
    act = activation_fn(activation)
    f = jax.jit(lambda b, xx, yy: jnp.mean(jnp.linalg.norm(b(xx, act) - yy, axis=-1)))
    return [float(f(b, jnp.asarray(x[i]), jnp.asarray(y[i]))) for i, b in enumerate(blocks)]


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        return run(a)
    except UsageError as e:
        print(f"fit_surrogates.py: error: {e}", file=sys.stderr)
        return 2


def run(a) -> int:
    import jax
    import numpy as np

    import ntkfuse
    from ntkfuse.compress import METHODS, save_compressed
    from ntkfuse.data import load_examples
    from ntkfuse.data.batching import make_batch
    from ntkfuse.ntk import class_prob, kernels, mlp_layers, ntk_error, output_error
    from ntkfuse.surrogate import FitConfig, collect_pairs, fit_blocks, init_surrogates
    from ntkfuse.surrogate.fit import _split

    layers, kinds = check_args(a, METHODS)
    try:
        os.makedirs(a.out, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {a.out}: {e}") from None
    if not os.access(a.out, os.W_OK):
        raise UsageError(f"--out {a.out} is not writable")
    try:
        examples = load_examples(a.data, a.n_examples)
    except ValueError as e:
        raise UsageError(f"--data: {e}") from None
    try:
        cfg, params, _, tok = ntkfuse.load(a.model)
    except Exception as e:
        raise UsageError(f"--model {a.model!r}: {e}") from None
    check_model_args(a, cfg, layers)

    fc = FitConfig(loss=a.loss, steps=a.steps, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
                   holdout=a.holdout, eval_every=a.eval_every, patience=a.patience,
                   checkpoint_every=a.checkpoint_every, seed=a.seed, progress=not a.no_progress)
    bs = 32
    batches = [make_batch(cfg, tok, examples[i:i + bs], a.max_length) for i in range(0, len(examples), bs)]
    t0 = time.time()
    X, Y = collect_pairs(cfg, params, batches, layers, a.max_tokens)
    print(f"collected {X.shape[1]} tokens x {len(layers)} layers from {len(examples)} examples "
          f"in {time.time() - t0:.1f}s", flush=True)
    tr, ho = _split(jax.random.PRNGKey(fc.seed), X.shape[1], fc.holdout)
    teachers = [ntkfuse.get_mlp(params, l) for l in layers]
    ntk_batch = make_batch(cfg, tok, examples[:a.ntk_examples], a.max_length) if a.ntk_examples else None
    sel = mlp_layers(layers)
    K_ref = kernels(cfg, params, ntk_batch, output=class_prob(0), selector=sel) if ntk_batch else None

    def model_metrics(blocks):
        new = ntkfuse.replace_mlps(params, dict(zip(layers, blocks)))
        err = output_error(cfg, params, new, batches, max(layers) + 1)
        m = {"output_error": err["layer"], "logit_error": err["logits"]}
        if K_ref is not None:
            K = kernels(cfg, new, ntk_batch, output=class_prob(0), selector=sel)
            for kind in K:
                e = ntk_error(K[kind], K_ref[kind])
                m[f"{kind}_abs"], m[f"{kind}_rel"] = e["abs"], e["rel"]
        return m

    args_sig = {k: v for k, v in vars(a).items() if k not in ("out", "no_progress", "kinds")
                and not k.startswith("plan_")}
    parts_dir = os.path.join(a.out, "parts")
    os.makedirs(parts_dir, exist_ok=True)
    results = []
    for kind in kinds:
        tag = hashlib.sha1(json.dumps([args_sig, kind], sort_keys=True).encode()).hexdigest()[:10]
        part = os.path.join(parts_dir, f"{kind}-{tag}.json")
        if os.path.exists(part):
            with open(part) as f:
                results.append(json.load(f))
            print(f"[{kind}] reusing finished result {part}", flush=True)
            continue
        t0 = time.time()
        key = jax.random.fold_in(jax.random.PRNGKey(a.seed), len(kind))
        if kind.startswith("bottleneck-"):
            method = kind.split("-", 1)[1]
            opts = {"n_init": a.n_init} if method in ("fusion", "cluster") else {}
            init = init_surrogates("bottleneck", teachers, key, width=a.width, method=method,
                                   activation=cfg.activation, **opts)
        else:
            init = init_surrogates(kind, teachers, key, rank=a.rank, x=X[:, tr], y=Y[:, tr])
        t_init = time.time() - t0
        before_block = block_error(init, X[:, ho], Y[:, ho], cfg.activation)
        before = model_metrics(init)
        if kind == "linear":   # closed form: nothing to fit
            fitted, steps, t_fit = init, 0, 0.0
        else:
            t0 = time.time()
            res = fit_blocks(init, X, Y, fc, cfg.activation, checkpoint_dir=os.path.join(a.out, "ckpt", f"{kind}-{tag}"))
            fitted, steps, t_fit = res.blocks, int(res.state.step), time.time() - t0
        after_block = block_error(fitted, X[:, ho], Y[:, ho], cfg.activation)
        after = model_metrics(fitted)
        new = ntkfuse.replace_mlps(params, dict(zip(layers, fitted)))
        save_compressed(os.path.join(a.out, f"model_{kind}"), cfg, new,
                        {"surrogate": kind, "layers": layers, "width": a.width, "rank": a.rank, "seed": a.seed,
                         "fit": dataclasses.asdict(fc)}, overwrite=True)
        r = {"kind": kind, "params_per_layer": [ntkfuse.models.count_params(b) for b in fitted],
             "teacher_params_per_layer": [ntkfuse.models.count_params(b) for b in teachers],
             "layers": layers, "block_error_before": before_block, "block_error_after": after_block,
             "before": before, "after": after, "steps": steps, "init_s": t_init, "fit_s": t_fit}
        write_atomic(part, json.dumps(r, indent=1))
        results.append(r)
        print(f"[{kind}] block err {np.mean(before_block):.4f} -> {np.mean(after_block):.4f}; "
              f"output err {before['output_error']:.4f} -> {after['output_error']:.4f}; "
              f"steps {steps}, fit {t_fit:.1f}s", flush=True)

    if a.plan_widths_list:
        allocate(a, cfg, params, batches, layers)

    meta = {"model": a.model, "data": a.data, "examples": len(examples), "tokens": int(X.shape[1]),
            "heldout_tokens": int(len(ho)), "layers": layers, "width": a.width, "rank": a.rank,
            "fit": dataclasses.asdict(fc), "ntk_examples": a.ntk_examples, "ntk_output": "class_prob(0)",
            "ntk_params": "MLPs of the chosen layers", "device": str(jax.devices()[0]),
            "block_error": "held-out mean over tokens of ||y_hat - y||_2 at the block output",
            "output_error": f"mean ||dh||_2 over non-pad tokens at hidden state {max(layers) + 1} (all examples)"}
    write_atomic(os.path.join(a.out, "results.json"), json.dumps({"meta": meta, "results": results}, indent=1))
    write_tables(a.out, results)
    plot(a.out, results)
    print(open(os.path.join(a.out, "results.md")).read())
    return 0


def allocate(a, cfg, params, batches, layers):
    """Singleton sensitivity sweep, then greedy and knapsack width plans (plan.json / plan.md)."""
    import jax
    import ntkfuse
    from ntkfuse.surrogate import greedy, knapsack, layer_sensitivity, sensitivity_options
    t0 = time.time()
    opts = {"n_init": a.n_init} if a.plan_method in ("fusion", "cluster") else {}
    rows = layer_sensitivity(cfg, params, batches, layers, a.plan_widths_list, method=a.plan_method,
                             key=jax.random.PRNGKey(a.seed), **opts)
    options = sensitivity_options(cfg, params, rows, metric=a.plan_metric)
    full = sum(ntkfuse.models.count_params(ntkfuse.get_mlp(params, l)) for l in layers)
    budget = int(a.plan_budget * full)
    plans = {name: solver(options, budget) for name, solver in (("greedy", greedy), ("knapsack", knapsack))}
    out = {"method": a.plan_method, "metric": a.plan_metric, "budget": budget, "full_params": full,
           "sensitivity": rows, "plans": {k: p.to_dict() for k, p in plans.items()}, "seconds": time.time() - t0}
    write_atomic(os.path.join(a.out, "plan.json"), json.dumps(out, indent=1))
    md = [f"## Width plans: {a.plan_method}, metric {a.plan_metric}, budget {budget} of {full} MLP params", "",
          "Singleton sensitivity (one layer replaced at a time):", "",
          "| layer | width | params | kl | output_error | logit_error |", "|---:|---:|---:|---:|---:|---:|"]
    md += [f"| {r['layer']} | {r['width']} | {r['params']} | {r['kl']:.4g} | {r['output_error']:.4g} | "
           f"{r['logit_error']:.4g} |" for r in rows]
    for name, p in plans.items():
        md += ["", f"### {name}", "", p.table(options)]
    write_atomic(os.path.join(a.out, "plan.md"), "\n".join(md) + "\n")
    print("\n".join(md), flush=True)


def write_tables(out, results):
    rows = []
    for r in results:
        for i, l in enumerate(r["layers"]):
            rows.append({"kind": r["kind"], "layer": l, "params": r["params_per_layer"][i],
                         "block_err_before": r["block_error_before"][i], "block_err_after": r["block_error_after"][i]})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_atomic(os.path.join(out, "results.csv"), buf.getvalue())
    model_rows = []
    for r in results:
        for when in ("before", "after"):
            model_rows.append({"kind": r["kind"], "when": when, **r[when]})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(model_rows[0]))
    w.writeheader()
    w.writerows(model_rows)
    write_atomic(os.path.join(out, "results_model.csv"), buf.getvalue())

    f = lambda v: "—" if v is None else f"{v:.4g}"
    md = ["## Block error per layer (held-out mean ‖ŷ − y‖₂), before → after fitting", "",
          "| kind | layer | params | before | after |", "|---|---:|---:|---:|---:|"]
    md += [f"| {r['kind']} | {r['layer']} | {r['params']} | {f(r['block_err_before'])} | {f(r['block_err_after'])} |"
           for r in rows]
    keys = [k for k in model_rows[0] if k not in ("kind", "when")]
    md += ["", "## Whole model (all chosen layers replaced), before → after fitting", "",
           "| kind | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for r in results:
        md.append(f"| {r['kind']} | " + " | ".join(f"{f(r['before'][k])} → {f(r['after'][k])}" for k in keys) + " |")
    write_atomic(os.path.join(out, "results.md"), "\n".join(md) + "\n")


def plot(out, results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fig, ax = plt.subplots(figsize=(8, 4))
    n = len(results)
    layers = results[0]["layers"]
    x = np.arange(len(layers))
    w = 0.8 / max(n, 1)
    for i, r in enumerate(results):
        ax.bar(x + i * w, r["block_error_before"], w, color=f"C{i}", alpha=0.35)
        ax.bar(x + i * w, r["block_error_after"], w * 0.6, color=f"C{i}", label=r["kind"])
    ax.set_xticks(x + 0.4 - w / 2, [f"layer {l}" for l in layers])
    ax.set_ylabel("held-out block error (pale: before fit)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    write_atomic(os.path.join(out, "results.png"), buf.getvalue())


if __name__ == "__main__":
    sys.exit(main())
