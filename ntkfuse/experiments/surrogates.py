"""Fit surrogate MLPs for chosen layers of a model and report what fitting buys
(METHOD.md §4): the driver behind `scripts/fit_surrogates.py`.

For every surrogate kind, all chosen layers' blocks are replaced and fitted to the
original blocks' (input, output) token pairs. `check_settings` runs every check that
needs no model; `run` loads, checks against the model's shapes, then fits kind by kind.
Each kind's result is a row of a result store (`parts/<kind>.json`, tagged by the run's
configuration hash), so a rerun reuses finished kinds and resumes unfinished fits from
their orbax checkpoints (`ckpt/`). Each kind draws its random numbers from its own key,
`keys.named_key(seed, kind)`.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from .. import validate
from . import hashing, keys, reports
from .device import describe_device
from .records import timestamp, versions
from .store import open_store

BASE_KINDS = ("linear", "linear_sgd", "low_rank_linear", "bottleneck-random")
KIND_CHOICES = ("linear", "linear_sgd", "low_rank_linear", "bottleneck-<method>", "bottleneck-random")
PLAN_METRICS = ("kl", "output_error", "logit_error")
# Bumped when a kind's computation changes for the same settings (2: per-kind keys from
# the kind's name instead of its length), so rows of an older version are recomputed.
ROW_FORMAT = 2
NTK_BATCH = 32  # examples per forward batch when collecting pairs and measuring output error


class SurrogateRunError(ValueError):
    """Bad settings for a fit_surrogates run (one line, with the valid choices)."""


@dataclasses.dataclass(frozen=True)
class SurrogatesConfig:
    """Settings of a run (the flags of scripts/fit_surrogates.py)."""
    model: str = "minilm"
    # None: the model family's defaults, resolved after loading (`resolve`): data
    # `Family.default_data` (MiniLM sample:sentiment, decoders sample:webnlg), layers the last
    # two thirds (MiniLM 2-5), width D/4 (MiniLM 384), rank d/4 (MiniLM 96)
    data: Optional[str] = None
    n_examples: Optional[int] = None
    layers: str | tuple | None = None
    width: Optional[int] = None
    rank: Optional[int] = None
    kinds: str | tuple = "linear,low_rank_linear,bottleneck-fusion,bottleneck-prune"
    loss: str = "mse"
    steps: int = 400
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    holdout: float = 0.15
    eval_every: int = 20
    patience: int = 5
    checkpoint_every: int = 100
    max_length: int = 64
    max_tokens: Optional[int] = None
    n_init: int = 4
    ntk_examples: int = 16
    plan_widths: str | tuple = ""
    plan_method: str = "prune"
    plan_budget: float = 0.5
    plan_metric: str = "kl"
    seed: int = 0

    def hashed(self) -> dict:
        """The settings that determine every kind's row (not the kind list, not the plan)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "kinds" and not k.startswith("plan_")}


def valid_kinds(methods: Optional[Sequence[str]] = None) -> tuple:
    """Every surrogate kind a run accepts: the base kinds and bottleneck-<method> for each
    compression method that changes the width (not magnitude, which keeps it)."""
    if methods is None:
        from ..compress import METHODS as methods
    return BASE_KINDS + tuple(f"bottleneck-{m}" for m in methods if m != "magnitude")


def kind_key(seed: int, kind: str):
    """The PRNG key of one surrogate kind: from its name, so no two kinds share one
    (the old `fold_in(PRNGKey(seed), len(kind))` gave equal-length names the same key)."""
    return keys.named_key(seed, kind)


def _list(spec) -> tuple:
    return tuple(s.strip() for s in spec.split(",") if s.strip()) if isinstance(spec, str) else tuple(spec)


@dataclasses.dataclass(frozen=True)
class Checked:
    """`check_settings`' normalised values."""
    layers: tuple
    kinds: tuple
    plan_widths: tuple


def check_settings(c: SurrogatesConfig, methods: Optional[Sequence[str]] = None) -> Checked:
    """Checks that need no model: run before anything heavy. Raises SurrogateRunError."""
    E = SurrogateRunError
    if methods is None:
        from ..compress import METHODS as methods
    kinds = _list(c.kinds)
    valid = valid_kinds(methods)
    unknown = [k for k in kinds if k not in valid]
    if unknown or not kinds:
        raise E(f"--kinds: unknown {unknown or '(none given)'}; valid: {', '.join(valid)}")
    if len(set(kinds)) != len(kinds):
        raise E(f"--kinds: a kind is listed twice in {','.join(kinds)}")
    for name in ("steps", "batch_size", "eval_every", "max_length", "n_init", "width", "rank"):
        if getattr(c, name) is None:   # width, rank: resolved from the model
            continue
        validate.check_positive(f"--{name.replace('_', '-')}", getattr(c, name), integer=True, error=E)
    for name in ("ntk_examples", "checkpoint_every", "patience"):
        validate.check_positive(f"--{name.replace('_', '-')}", getattr(c, name), integer=True, allow_zero=True,
                                error=E)
    for name in ("n_examples", "max_tokens"):
        if getattr(c, name) is not None:
            validate.check_positive(f"--{name.replace('_', '-')}", getattr(c, name), integer=True, error=E)
    if not 0 < c.holdout < 1:
        raise E(f"--holdout must be in (0, 1), got {c.holdout}")
    validate.check_positive("--lr", c.lr, error=E)
    validate.check_positive("--weight-decay", c.weight_decay, allow_zero=True, error=E)
    validate.check_choice("--loss", c.loss, ("mse", "cosine"), error=E)
    validate.check_choice("--plan-metric", c.plan_metric, PLAN_METRICS, error=E)
    layers = None
    if c.layers is not None:
        layers = validate.parse_layers(c.layers, error=lambda m: E(f"--layers: {m}"))
        if not layers:
            raise E("--layers: no layers given")
    plan_widths = ()
    if c.plan_widths:
        try:
            plan_widths = tuple(int(w) for w in _list(c.plan_widths))
        except ValueError:
            raise E(f"--plan-widths {c.plan_widths!r}: expected integers, e.g. 96,192,384") from None
        if not plan_widths:
            raise E("--plan-widths must be positive integers")
        for w in plan_widths:
            validate.check_positive("--plan-widths", w, integer=True, error=E)
        validate.check_choice("--plan-method", c.plan_method, tuple(m for m in methods if m != "magnitude"),
                              error=E)
        if not 0 < c.plan_budget <= 1:
            raise E(f"--plan-budget must be in (0, 1], got {c.plan_budget}")
    return Checked(layers, kinds, plan_widths)


def resolve(c: SurrogatesConfig, cfg) -> SurrogatesConfig:
    """`c` with every None default replaced by the model's: data (the family's default), layers
    (the last two thirds, as "a-b"), width D/4, rank d/4 — for MiniLM the values that were the
    fixed defaults before, so such runs keep their configuration hash."""
    from ..models.families import get_family
    from .compare import default_layers
    ch = {}
    if c.data is None:
        ch["data"] = get_family(cfg.family).default_data
    if c.layers is None:
        ls = default_layers(cfg.num_layers)
        ch["layers"] = f"{ls[0]}-{ls[-1]}" if len(ls) > 1 else str(ls[0])
    if c.width is None:
        ch["width"] = max(1, cfg.intermediate // 4)
    if c.rank is None:
        ch["rank"] = max(1, cfg.hidden // 4)
    return dataclasses.replace(c, **ch)


def output_name(cfg) -> str:
    """The NTK's scalar output, as ntk_compare picks it: class-prob (class 0) for a classifier,
    target-logprob (summed over target tokens) for a language model."""
    return "target-logprob" if cfg.head == "lm" else "class-prob"


def scalar_output(cfg):
    from .. import ntk
    return ntk.target_logprob("sum") if output_name(cfg) == "target-logprob" else ntk.class_prob(0)


def _unsupported(block) -> set:
    subs = block.sub_blocks()
    if subs is not None:
        return set().union(*(_unsupported(s) for s in subs))
    return set(type(block).unsupported_methods)


def check_model(c: SurrogatesConfig, checked: Checked, cfg, params=None) -> tuple:
    """Checks against the loaded model's shapes (`c` resolved); returns the layers."""
    E = SurrogateRunError
    layers = validate.parse_layers(c.layers, error=lambda m: E(f"--layers: {m}"))
    layers = validate.check_layers(layers, cfg.num_layers, error=lambda m: E(f"--layers: {m}"))
    D = cfg.intermediate
    for what, w in [("--width", c.width)] + [("--plan-widths", w) for w in checked.plan_widths]:
        validate.check_width(w, D, what=what, error=E)
        if w == D:
            raise E(f"{what} {w} is the MLP width D = {D} itself: nothing to compress (use 1..{D - 1})")
    if c.rank > cfg.hidden:
        raise E(f"--rank {c.rank} out of range: must be between 1 and the hidden size d = {cfg.hidden}")
    if cfg.head not in ("classifier", "lm"):
        raise E("this script measures NTKs of a classifier's class probability or a language model's target "
                f"log-probability; the model's head is {cfg.head!r}")
    if params is not None:
        from ..models import get_mlp
        bad = set().union(*(_unsupported(get_mlp(params, l)) for l in layers))
        kind = type(get_mlp(params, layers[0])).__name__
        for k in checked.kinds:
            if k.startswith("bottleneck-") and k.split("-", 1)[1] in bad:
                raise E(f"--kinds {k}: {k.split('-', 1)[1]} does not apply to this model's {kind} blocks; "
                        f"drop it (unsupported here: {', '.join(sorted(bad))})")
        if checked.plan_widths and c.plan_method in bad:
            raise E(f"--plan-method {c.plan_method} does not apply to this model's {kind} blocks "
                    f"(unsupported here: {', '.join(sorted(bad))})")
    return layers


def block_error(blocks, x, y, activation) -> list:
    """Mean over tokens of ‖ŷ − y‖₂ for each layer (x, y: (L, N, d); a capacity-bound MoE block
    without its capacity: its pairs are the tokens it dispatched, `surrogate.collect`)."""
    import jax
    import jax.numpy as jnp
    from ..models import activation_fn
    from ..surrogate.collect import without_capacity
    act = activation_fn(activation)
    f = jax.jit(lambda b, xx, yy: jnp.mean(jnp.linalg.norm(b(xx, act) - yy, axis=-1)))
    return [float(f(without_capacity(b), jnp.asarray(x[i]), jnp.asarray(y[i]))) for i, b in enumerate(blocks)]


def token_groups(pairs: dict, layers: Sequence[int]) -> list:
    """[(X (L_g, N, d), Y, layers of the group)]: the chosen layers grouped by token count, in
    order of first appearance, so each group stacks (an encoder-decoder's sides differ, and a
    capacity-bound MoE layer keeps only its dispatched tokens). One group for a model whose
    layers all see the same tokens: the stacked pairs of before."""
    import numpy as np
    by_n: dict = {}
    for l in layers:
        by_n.setdefault(len(pairs[l][0]), []).append(l)
    return [(np.stack([pairs[l][0] for l in gl]), np.stack([pairs[l][1] for l in gl]), tuple(gl))
            for gl in by_n.values()]


def heldout_error(blocks: dict, groups: list, splits: list, layers: Sequence[int], activation) -> list:
    """`block_error` of {layer: block} on each group's held-out tokens, in the order of `layers`."""
    err = {}
    for (X, Y, gl), (_, ho) in zip(groups, splits):
        err.update(zip(gl, block_error([blocks[l] for l in gl], X[:, ho], Y[:, ho], activation)))
    return [err[l] for l in layers]


def fit_layers(blocks: list, X, Y, fc, activation: str, checkpoint_dir: str) -> tuple:
    """Fit blocks of layers sharing tokens: stacked in one `fit_blocks` when they have one kind and
    shape, else `fit_grouped` (an encoder-decoder's dense and MoE layers). Returns (blocks, steps)."""
    from ..surrogate import fit_blocks, fit_grouped
    from ..surrogate.fit import _group_key
    if len({_group_key(b) for b in blocks}) == 1:
        res = fit_blocks(blocks, X, Y, fc, activation, checkpoint_dir=checkpoint_dir)
        return res.blocks, int(res.state.step)
    fitted, results = fit_grouped(blocks, X, Y, fc, activation, checkpoint_dir=checkpoint_dir)
    return fitted, max(int(r.state.step) for r in results.values())


def run(c: SurrogatesConfig, out: str | Path, *, progress: bool = True, fresh: bool = False,
        log: Callable[[str], None] = print) -> dict:
    """Fit every kind of `c` (reusing finished ones in `out`), write the reports; returns
    {"meta": ..., "results": [one row per kind]} as written to results.json."""
    checked = check_settings(c)
    out = Path(out)
    E = SurrogateRunError
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise E(f"--out {out}: {e}") from None
    if not os.access(out, os.W_OK):
        raise E(f"--out {out} is not writable")

    import jax
    import numpy as np

    import ntkfuse
    from ..compress import save_compressed
    from ..data import load_examples
    from ..data.batching import make_batch
    from ..ntk import kernels, mlp_layers, ntk_error, output_error
    from ..surrogate import FitConfig, collect_layer_pairs, init_surrogates
    from ..surrogate.fit import _split

    examples = None
    if c.data is not None:   # a bad data spec fails before the model loads
        try:
            examples = load_examples(c.data, c.n_examples)
        except ValueError as e:
            raise E(f"--data: {e}") from None
    try:
        cfg, params, _, tok = ntkfuse.load(c.model)
    except Exception as e:
        raise E(f"--model {c.model!r}: {e}") from None
    c = resolve(c, cfg)
    layers = check_model(c, checked, cfg, params)
    if examples is None:
        try:
            examples = load_examples(c.data, c.n_examples)
        except ValueError as e:
            raise E(f"--data: {e}") from None

    fc = FitConfig(loss=c.loss, steps=c.steps, batch_size=c.batch_size, lr=c.lr, weight_decay=c.weight_decay,
                   holdout=c.holdout, eval_every=c.eval_every, patience=c.patience,
                   checkpoint_every=c.checkpoint_every, seed=c.seed, progress=progress)
    batches = [make_batch(cfg, tok, examples[i:i + NTK_BATCH], c.max_length)
               for i in range(0, len(examples), NTK_BATCH)]
    run_hash = hashing.config_hash(
        {"version": ntkfuse.__version__, "settings": c.hashed(), "model_config": cfg.to_dict()},
        {f"{i}/{k}": np.asarray(v) for i, b in enumerate(batches) for k, v in b.items()})
    store = open_store(out, run_hash, {**dataclasses.asdict(c), "layers": list(layers), "kinds": list(checked.kinds)},
                       tool="fit_surrogates", fresh=fresh, rows="parts", caches=("ckpt",), error=E)
    t0 = time.time()
    pairs = collect_layer_pairs(cfg, params, batches, layers, c.max_tokens)
    groups = token_groups(pairs, layers)
    log(f"collected {', '.join(str(X.shape[1]) for X, _, _ in groups)} tokens x "
        f"{', '.join(str(len(g)) for _, _, g in groups)} layers from {len(examples)} examples "
        f"in {time.time() - t0:.1f}s")
    splits = [_split(jax.random.PRNGKey(fc.seed), X.shape[1], fc.holdout) for X, _, _ in groups]
    teachers = [ntkfuse.get_mlp(params, l) for l in layers]
    ntk_batch = make_batch(cfg, tok, examples[:c.ntk_examples], c.max_length) if c.ntk_examples else None
    sel = mlp_layers(layers)
    out_fn = scalar_output(cfg)
    K_ref = kernels(cfg, params, ntk_batch, output=out_fn, selector=sel) if ntk_batch else None

    def model_metrics(blocks):
        new = ntkfuse.replace_mlps(params, dict(zip(layers, blocks)))
        err = output_error(cfg, params, new, batches, cfg.hidden_state_index(max(layers)))
        m = {"output_error": err["layer"], "logit_error": err["logits"]}
        if K_ref is not None:
            K = kernels(cfg, new, ntk_batch, output=out_fn, selector=sel)
            for kind in K:
                e = ntk_error(K[kind], K_ref[kind])
                m[f"{kind}_abs"], m[f"{kind}_rel"] = e["abs"], e["rel"]
        return m

    results = []
    for kind in checked.kinds:
        row_tag = hashing.tag(run_hash, kind, ROW_FORMAT)
        r = store.load_row((kind,), row_tag)
        if r is not None:
            results.append(r)
            log(f"[{kind}] reusing finished result {store.row_path((kind,))}")
            continue
        t0 = time.time()
        key = kind_key(c.seed, kind)
        # one initialisation per group of layers sharing tokens; a single group uses the kind's key itself
        init = {}
        for g, ((X, Y, gl), (tr, _)) in enumerate(zip(groups, splits)):
            gkey = key if len(groups) == 1 else jax.random.fold_in(key, g)
            gteachers = [teachers[layers.index(l)] for l in gl]
            if kind.startswith("bottleneck-"):
                method = kind.split("-", 1)[1]
                opts = {"n_init": c.n_init} if method in ("fusion", "cluster") else {}
                blocks = init_surrogates("bottleneck", gteachers, gkey, width=c.width, method=method,
                                         activation=cfg.activation, **opts)
            else:
                blocks = init_surrogates(kind, gteachers, gkey, rank=c.rank, x=X[:, tr], y=Y[:, tr])
            init.update(zip(gl, blocks))
        t_init = time.time() - t0
        before_block = heldout_error(init, groups, splits, layers, cfg.activation)
        before = model_metrics([init[l] for l in layers])
        if kind == "linear":   # closed form: nothing to fit
            fitted, steps, t_fit = init, 0, 0.0
        else:
            t0 = time.time()
            ck = out / "ckpt" / f"{kind}-{row_tag}"
            fitted, steps = {}, 0
            for g, (X, Y, gl) in enumerate(groups):
                blocks, n = fit_layers([init[l] for l in gl], X, Y, fc, cfg.activation,
                                       str(ck if len(groups) == 1 else ck / f"tokens{g}"))
                fitted.update(zip(gl, blocks))
                steps = max(steps, n)
            t_fit = time.time() - t0
        fitted = [fitted[l] for l in layers]
        after_block = heldout_error(dict(zip(layers, fitted)), groups, splits, layers, cfg.activation)
        after = model_metrics(fitted)
        new = ntkfuse.replace_mlps(params, dict(zip(layers, fitted)))
        save_compressed(str(out / f"model_{kind}"), cfg, new,
                        {"surrogate": kind, "layers": list(layers), "width": c.width, "rank": c.rank,
                         "seed": c.seed, "fit": dataclasses.asdict(fc)}, overwrite=True)
        r = {"kind": kind, "params_per_layer": [ntkfuse.models.count_params(b) for b in fitted],
             "teacher_params_per_layer": [ntkfuse.models.count_params(b) for b in teachers],
             "layers": list(layers), "block_error_before": before_block, "block_error_after": after_block,
             "before": before, "after": after, "steps": steps, "init_s": t_init, "fit_s": t_fit}
        results.append(store.save_row((kind,), r, row_tag))
        log(f"[{kind}] block err {np.mean(before_block):.4f} -> {np.mean(after_block):.4f}; "
            f"output err {before['output_error']:.4f} -> {after['output_error']:.4f}; "
            f"steps {steps}, fit {t_fit:.1f}s")

    if checked.plan_widths:
        allocate(c, checked.plan_widths, cfg, params, batches, layers, out, log)

    per_layer = {l: (X.shape[1], len(ho)) for (X, _, gl), (_, ho) in zip(groups, splits) for l in gl}
    meta = {"model": c.model, "data": c.data, "examples": len(examples),
            "tokens": int(per_layer[layers[0]][0]), "heldout_tokens": int(per_layer[layers[0]][1]),
            "tokens_per_layer": [int(per_layer[l][0]) for l in layers],
            "heldout_tokens_per_layer": [int(per_layer[l][1]) for l in layers], "layers": list(layers), "width": c.width, "rank": c.rank,
            "fit": dataclasses.asdict(fc), "ntk_examples": c.ntk_examples, "ntk_output": "target_logprob(sum)" if output_name(cfg) == "target-logprob" else "class_prob(0)",
            "ntk_params": "MLPs of the chosen layers", "device": describe_device(), "versions": versions(),
            "timestamp": timestamp(), "config_hash": run_hash,
            "block_error": "held-out mean over tokens of ||y_hat - y||_2 at the block output",
            "output_error": f"mean ||dh||_2 over non-pad tokens at hidden state "
                            f"{cfg.hidden_state_index(max(layers))} (all examples)"}
    result = {"meta": meta, "results": results}
    write_reports(result, out)
    return result


def allocate(c: SurrogatesConfig, widths: tuple, cfg, params, batches, layers, out: Path,
             log: Callable[[str], None] = print) -> dict:
    """Singleton sensitivity sweep, then greedy and knapsack width plans (plan.json / plan.md)."""
    import jax

    import ntkfuse
    from ..surrogate import greedy, knapsack, layer_sensitivity, sensitivity_options
    t0 = time.time()
    opts = {"n_init": c.n_init} if c.plan_method in ("fusion", "cluster") else {}
    rows = layer_sensitivity(cfg, params, batches, layers, list(widths), method=c.plan_method,
                             key=jax.random.PRNGKey(c.seed), **opts)
    options = sensitivity_options(cfg, params, rows, metric=c.plan_metric)
    full = sum(ntkfuse.models.count_params(ntkfuse.get_mlp(params, l)) for l in layers)
    budget = int(c.plan_budget * full)
    plans = {name: solver(options, budget) for name, solver in (("greedy", greedy), ("knapsack", knapsack))}
    result = {"method": c.plan_method, "metric": c.plan_metric, "budget": budget, "full_params": full,
              "sensitivity": rows, "plans": {k: p.to_dict() for k, p in plans.items()},
              "seconds": time.time() - t0}
    reports.write_json(out / "plan.json", result, indent=1)
    md = [f"## Width plans: {c.plan_method}, metric {c.plan_metric}, budget {budget} of {full} MLP params", "",
          "Singleton sensitivity (one layer replaced at a time):", "",
          reports.markdown_table(["layer", "width", "params", "kl", "output_error", "logit_error"],
                                 [[r["layer"], r["width"], r["params"], f"{r['kl']:.4g}", f"{r['output_error']:.4g}",
                                   f"{r['logit_error']:.4g}"] for r in rows], align="rrrrrr")]
    for name, p in plans.items():
        md += ["", f"### {name}", "", p.table(options)]
    text = "\n".join(md) + "\n"
    from ..files import atomic_write
    atomic_write(out / "plan.md", text)
    log(text.rstrip("\n"))
    return result


def layer_rows(results: Sequence[dict]) -> list:
    """One row per (kind, layer): params and held-out block error before/after (results.csv)."""
    return [{"kind": r["kind"], "layer": l, "params": r["params_per_layer"][i],
             "block_err_before": r["block_error_before"][i], "block_err_after": r["block_error_after"][i]}
            for r in results for i, l in enumerate(r["layers"])]


def model_rows(results: Sequence[dict]) -> list:
    """One row per (kind, before/after): whole-model output and NTK errors (results_model.csv)."""
    return [{"kind": r["kind"], "when": when, **r[when]} for r in results for when in ("before", "after")]


def format_markdown(results: Sequence[dict]) -> str:
    """results.md: block error per layer and whole-model errors, before → after fitting."""
    f = lambda v: "—" if v is None else f"{v:.4g}"  # noqa: E731
    rows, mrows = layer_rows(results), model_rows(results)
    md = ["## Block error per layer (held-out mean ‖ŷ − y‖₂), before → after fitting", "",
          reports.markdown_table(["kind", "layer", "params", "before", "after"],
                                 [[r["kind"], r["layer"], r["params"], f(r["block_err_before"]),
                                   f(r["block_err_after"])] for r in rows], align="lrrrr")]
    keys_ = [k for k in mrows[0] if k not in ("kind", "when")]
    md += ["", "## Whole model (all chosen layers replaced), before → after fitting", "",
           reports.markdown_table(["kind"] + keys_,
                                  [[r["kind"]] + [f"{f(r['before'][k])} → {f(r['after'][k])}" for k in keys_]
                                   for r in results], align="l" + "r" * len(keys_))]
    return "\n".join(md) + "\n"


def plot(results: Sequence[dict], path: Optional[str | Path] = None) -> bytes:
    """Held-out block error per layer, one bar per kind: pale before fitting, solid after."""

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
    return reports.save_figure(fig, path)


def write_reports(result: dict, out: str | Path) -> dict:
    """results.json, results.csv, results_model.csv, results.md, results.png in `out` (atomic each)."""
    from ..files import atomic_write
    out = Path(out)
    files = {"json": out / "results.json", "csv": out / "results.csv", "model_csv": out / "results_model.csv",
             "md": out / "results.md", "png": out / "results.png"}
    reports.write_json(files["json"], result, indent=1)
    atomic_write(files["csv"], reports.csv_text(layer_rows(result["results"])))
    atomic_write(files["model_csv"], reports.csv_text(model_rows(result["results"])))
    atomic_write(files["md"], format_markdown(result["results"]))
    plot(result["results"], files["png"])
    return files


__all__ = ["SurrogatesConfig", "SurrogateRunError", "valid_kinds", "kind_key", "check_settings", "check_model",
           "resolve", "output_name", "scalar_output",
           "block_error", "run", "allocate", "layer_rows", "model_rows", "format_markdown", "plot", "write_reports",
           "KIND_CHOICES", "BASE_KINDS", "ROW_FORMAT"]
