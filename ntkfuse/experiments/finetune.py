"""The fine-tuning driver: fine-tune the full model and every chosen compressed model on
one task over a learning-rate grid and seeds, and write a paper-style table
(method × dev metric, params, best epoch, peak memory, time) as CSV/JSON/markdown plus
learning-curve and bar plots.

`prepare(config)` checks everything (task, data, labels against the head, methods,
layers, width, learning rates) and loads model and data before any compression or
training; `run(plan, out_dir)` does the work. Each (method, task, lr, seed) result is
saved as soon as it is finished and reused when its tag matches, and each running row
keeps an orbax checkpoint per epoch, so an interrupted run resumes and loses nothing.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np

from .. import __version__, validate
from ..checkpoints import load
from ..data import DataError, load_examples
from ..files import atomic_write
from ..finetune import FinetuneError, Task, TrainConfig, check_data, finetune, get_task, split_dev
from . import hashing, reports
from .compare import default_layers, method_key, method_options, parse_list
from .device import describe_device
from .records import timestamp, versions
from .store import open_store

FULL = "full"                 # the uncompressed model's row
TOOL = "finetune"
ROW_FORMAT = 1
DEFAULT_METHODS = ("fusion", "prune", "sketch")


@dataclasses.dataclass(frozen=True)
class FinetuneRunConfig:
    """Settings of a run. None means "the default for this model/task" (resolved in `prepare`).
    Defaults: the embedded MiniLM on the shipped sentiment sample with 20 % held out as dev,
    the full model and fusion/prune/sketch at ntk_compare's defaults (last two thirds of the
    layers, width D/4), 3 epochs, one learning rate, one seed."""
    model: str = "minilm"
    task: str = "sample:sentiment"
    train: Optional[str] = None             # data spec overriding the task's training split
    dev: Optional[str] = None               # None: the task's dev split, else hold out dev_fraction
    dev_fraction: float = 0.2
    n_train: Optional[int] = None           # first N training examples
    n_dev: Optional[int] = None
    methods: tuple = DEFAULT_METHODS        # compressed variants; the full model always runs
    layers: Optional[Any] = None
    width: Optional[int] = None
    lrs: tuple = (3e-4,)
    seeds: tuple = (0,)
    epochs: int = 3
    batch_size: int = 16
    max_length: int = 64
    weight_decay: float = 0.1
    warmup: float = 0.06
    clip: Optional[float] = None            # None: 1.0 for generation (GPT-2), off otherwise
    tune_epochs: int = 0                    # layer-wise task tuning of the compressed MLPs first
    n_init: int = 3                         # k-means restarts (fusion, cluster)
    method_options: Mapping = dataclasses.field(default_factory=dict)
    generate: bool = True
    max_new_tokens: int = 40
    compute_dtype: str = "float32"          # "bfloat16": forward/backward in bf16 from float32 master params
    remat: str = "dots"                     # TrainConfig.remat: dots | none | layer (memory only)

    def replace(self, **kw) -> "FinetuneRunConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["method_options"] = {k: dict(v) for k, v in dict(self.method_options).items()}
        return d


@dataclasses.dataclass
class Plan:
    config: FinetuneRunConfig
    task: Task
    methods: tuple           # "full" first, then the compressed ones
    layers: tuple
    width: int
    lrs: tuple
    seeds: tuple
    train: list
    dev: list
    cfg: Any
    params: Any
    tok: Any
    model_path: str
    config_hash: str = ""

    def train_config(self, lr: float, seed: int) -> TrainConfig:
        c = self.config
        clip = c.clip if c.clip is not None else (1.0 if self.task.kind == "generation" else None)
        return TrainConfig(lr=lr, epochs=c.epochs, batch_size=c.batch_size, weight_decay=c.weight_decay,
                           warmup=c.warmup, clip=clip, seed=seed, max_length=c.max_length,
                           tune_epochs=c.tune_epochs, generate=c.generate, max_new_tokens=c.max_new_tokens,
                           compute_dtype=c.compute_dtype, remat=c.remat)

    def resolved(self) -> dict:
        d = self.config.to_dict()
        d.update(methods=list(self.methods), layers=list(self.layers), width=self.width, lrs=list(self.lrs),
                 seeds=list(self.seeds), task_kind=self.task.kind, metric=self.task.metric,
                 train_spec=self.task.train, dev_spec=self.task.dev, n_train_examples=len(self.train),
                 n_dev_examples=len(self.dev), model_path=self.model_path, model_config=self.cfg.to_dict())
        return d


def check_settings(c: FinetuneRunConfig) -> tuple:
    """Checks that need no model or data; returns (methods, lrs, seeds)."""
    e = FinetuneError
    from ..compress import check_method_options, check_methods
    methods = tuple(m for m in check_methods(parse_list(c.methods) or (), error=e, also=(FULL,)) if m != FULL)
    check_method_options(c.method_options, error=e)
    lrs = tuple(float(x) if isinstance(x, str) else x for x in (parse_list(c.lrs) or ()))
    if not lrs:
        raise e("no learning rate given")
    for lr in lrs:
        validate.check_positive("learning rate (lr)", lr, error=e)
    seeds = tuple(int(s) for s in (parse_list(c.seeds) or ()))
    if not seeds:
        raise e("no seed given")
    validate.check_positive("n_init", c.n_init, integer=True, error=e)
    for name in ("n_train", "n_dev"):
        if getattr(c, name) is not None:
            validate.check_positive(name, getattr(c, name), integer=True, error=e)
    # every TrainConfig check (epochs, batch size, warm-up, clip ...) before any loading
    TrainConfig(lr=lrs[0], epochs=c.epochs, batch_size=c.batch_size, weight_decay=c.weight_decay,
                warmup=c.warmup, clip=c.clip, max_length=c.max_length, tune_epochs=c.tune_epochs,
                max_new_tokens=c.max_new_tokens, compute_dtype=c.compute_dtype, remat=c.remat)
    return methods, lrs, seeds


def _read(task: Task, spec: str, n: Optional[int]) -> list:
    if task.record is not None and not spec.startswith("sample:"):
        from ..data import is_local, load_hf
        if not is_local(spec):
            ex = load_hf(spec, task.label_type, task.record)
            return ex[:n] if n else ex
    return load_examples(spec, n, task.label_type)


def prepare(config: FinetuneRunConfig, loaded=None) -> Plan:
    """Validate and resolve `config`, load data and model. Raises FinetuneError, DataError,
    CheckpointError (ValueErrors with one-line messages) before any compression or training."""
    methods, lrs, seeds = check_settings(config)
    task = get_task(config.task, config.train, config.dev)
    if task.train is None:
        raise FinetuneError(f"task {task.name}: no training data; pass --train")
    # data before the model: a bad file should not wait for a model to load
    train = _read(task, task.train, config.n_train)
    if task.dev is not None:
        dev = _read(task, task.dev, config.n_dev)
    else:
        train, dev = split_dev(train, config.dev_fraction, seed=0)
        dev = dev[:config.n_dev] if config.n_dev else dev
    num_labels = task.num_labels if task.kind != "generation" else None
    head = "lm" if task.kind == "generation" else "classifier"
    if loaded is None:
        loaded = load(config.model, head=head, num_labels=num_labels)
    cfg, params, path, tok = loaded
    if cfg.is_encoder_decoder:
        raise FinetuneError(f"{path}: fine-tuning does not support encoder-decoder models ({cfg.family}) yet")
    check_data(cfg, task, train, dev)
    if tok is None:
        raise DataError(f"{path}: the model has no tokenizer; a checkpoint directory needs tokenizer files")
    L, D = cfg.num_layers, cfg.intermediate
    layers = validate.parse_layers(config.layers, error=FinetuneError) or default_layers(L)
    layers = tuple(sorted(validate.check_layers(layers, L, error=FinetuneError)))
    width = validate.check_width(D // 4 if config.width is None else config.width, D, error=FinetuneError)
    plan = Plan(config, task, (FULL,) + methods, layers, width, lrs, seeds, list(train), list(dev), cfg, params,
                tok, str(path))
    plan.config_hash = config_hash(plan)
    return plan


def _examples_json(examples) -> list:
    return [dataclasses.astuple(e) for e in examples]


def config_hash(plan: Plan) -> str:
    """Everything that determines every row besides its (method, lr, seed) and method options."""
    c = plan.config
    key = {"version": __version__, "model": c.model, "model_config": plan.cfg.to_dict(), "task": plan.task.name,
           "kind": plan.task.kind, "layers": plan.layers, "width": plan.width,
           "train": plan.train_config(1.0, 0).replace(lr=1.0, seed=0).to_dict(),
           "data": hashing.tag(_examples_json(plan.train), _examples_json(plan.dev))}
    return hashing.config_hash(key)


def row_id(plan: Plan, method: str, lr: float, seed: int) -> tuple:
    return (method, plan.task.name, f"{lr:g}", seed)


def row_tag(plan: Plan, method: str, lr: float, seed: int) -> str:
    opts = method_options(plan.config, method) if method != FULL else {}
    return hashing.tag(plan.config_hash, list(row_id(plan, method, lr, seed)), opts, ROW_FORMAT)


def compress_variant(plan: Plan, method: str, seed: int):
    """(params, seconds) of `method` at the plan's layers and width; the full model as is.
    The key is ntk_compare's per-method key of `seed`."""
    if method == FULL:
        return plan.params, 0.0
    from .. import compress as C
    t0 = time.perf_counter()
    new = C.compress(plan.cfg, plan.params, method, plan.layers, plan.width, method_key(seed, method),
                     **method_options(plan.config, method))
    jax.block_until_ready(jax.tree_util.tree_leaves(new))
    return new, time.perf_counter() - t0


def run_row(plan: Plan, method: str, lr: float, seed: int, params, compress_s: float, ckpt_dir: Optional[Path],
            progress: bool, log: Callable) -> dict:
    from ..compress import param_count
    tc = plan.train_config(lr, seed)
    tuned = method != FULL and tc.tune_epochs > 0
    from ..finetune import peak_memory
    before = peak_memory()
    r = finetune(plan.cfg, params, plan.tok, plan.train, plan.dev, plan.task, tc,
                 teacher=plan.params if tuned else None, layers=plan.layers if tuned else (),
                 ckpt_dir=ckpt_dir, tag=row_tag(plan, method, lr, seed), progress=progress, log=log)
    import resource
    return {
        "method": method, "task": plan.task.name, "lr": lr, "seed": seed,
        "options": method_options(plan.config, method) if method != FULL else {},
        "params": param_count(params), "mlp_params": param_count(params, plan.layers),
        "metric": plan.task.metric, "value": r["best"][plan.task.metric], "best_epoch": r["best_epoch"],
        "best": {k: v for k, v in r["best"].items() if k not in ("epoch", "epoch_s")},
        "history": r["history"], "steps": r["steps"], "peak_memory_bytes": r["peak_memory_bytes"],
        # JAX's peak is the process's high-water mark and cannot be reset: it is this row's own
        # peak only when the row raised it; otherwise the row stayed at or below it
        "peak_memory_own": r["peak_memory_bytes"] is not None and (before is None
                                                                   or r["peak_memory_bytes"] > before),
        # process-wide high-water mark (includes every earlier row): a bound, not this row's own
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_s": r["train_s"], "time_s": r["time_s"] + compress_s, "compress_s": compress_s,
        "layerwise_tuned": tuned,
    }


def run(plan: Plan, out_dir: str | Path, *, progress: bool = True, fresh: bool = False,
        log: Callable[[str], None] = lambda s: None) -> dict:
    """Every (method, lr, seed) row of `plan`, reusing finished rows in `out_dir`; returns
    the result dict that `write_reports` writes."""
    import shutil
    from tqdm.auto import tqdm
    started = time.perf_counter()
    store = open_store(out_dir, plan.config_hash, plan.resolved(), tool=TOOL, fresh=fresh, caches=("ckpt",),
                       error=FinetuneError)
    rows, reused = [], []
    todo = [(m, lr, s) for m in plan.methods for s in plan.seeds for lr in plan.lrs]
    bar = tqdm(todo, desc="fine-tune", unit="run", disable=not progress, leave=False)
    variants: dict = {}
    for method, lr, seed in bar:
        rid = row_id(plan, method, lr, seed)
        bar.set_postfix_str(f"{method} lr={lr:g} seed={seed}")
        tag = row_tag(plan, method, lr, seed)
        row = store.load_row(rid, tag)
        if row is not None:
            reused.append(rid)
        else:
            if (method, seed) not in variants:
                variants = {(method, seed): compress_variant(plan, method, seed)}   # one variant in memory
            params, cs = variants[(method, seed)]
            ckpt = store.path("ckpt") / Path(store.row_path(rid).name).stem
            log(f"{method} lr={lr:g} seed={seed}: fine-tuning ...")
            row = store.save_row(rid, run_row(plan, method, lr, seed, params, cs, ckpt, progress, log), tag)
            shutil.rmtree(ckpt, ignore_errors=True)
        rows.append(row)
    bar.close()
    if reused:
        log(f"reused {len(reused)} finished row(s) from {out_dir}")
    return {"tool": TOOL, "config_hash": plan.config_hash, "config": plan.resolved(), "rows": rows,
            "summary": summary(plan.task, rows), "reused": [list(r) for r in reused], "versions": versions(),
            "device": describe_device(), "timestamp": timestamp(), "wall_s": time.perf_counter() - started}


# --------------------------------------------------------------------------- tables and plots


def summary(task: Task, rows: list) -> list:
    """One line per method: the learning rate whose mean best-dev metric over seeds is best,
    with that metric (mean, std over seeds), params, best epoch, peak memory and time."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        by_lr = {}
        for r in mine:
            by_lr.setdefault(r["lr"], []).append(r)
        pick = (min if task.lower_is_better else max)(by_lr, key=lambda lr: np.mean([r["value"] for r in by_lr[lr]]))
        rs = by_lr[pick]
        vals = [r["value"] for r in rs]
        metrics = sorted({k for r in rs for k in r["best"] if k != "train_loss"})
        mem = [r["peak_memory_bytes"] for r in rs if r["peak_memory_bytes"] is not None]
        own = all(r.get("peak_memory_own", True) for r in rs)
        out.append({
            "method": method, "params": rs[0]["params"], "mlp_params": rs[0]["mlp_params"], "lr": pick,
            "metric": task.metric, "value": float(np.mean(vals)), "std": float(np.std(vals)) if len(vals) > 1 else None,
            **{f"dev_{k}": float(np.mean([r["best"][k] for r in rs])) for k in metrics},
            "best_epoch": ",".join(str(r["best_epoch"]) for r in rs), "n_seeds": len(rs),
            "peak_memory_gb": max(mem) / 2**30 if mem else None,
            "peak_memory_upper_bound": bool(mem) and not own,
            "train_s": float(np.mean([r["train_s"] for r in rs])), "time_s": float(np.mean([r["time_s"] for r in rs])),
        })
    return out


def _count(n) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else (f"{n / 1e3:.1f}k" if n >= 1e3 else str(n))


def table_rows(result: dict) -> tuple[list, list]:
    s = result["summary"]
    metrics = sorted({k[4:] for r in s for k in r if k.startswith("dev_")})
    main = result["config"]["metric"]
    metrics = [main] + [m for m in metrics if m != main]
    full = next((r for r in s if r["method"] == FULL), None)
    head = (["method", "params"] + [f"dev {m}" for m in metrics]
            + ["lr", "best epoch", "peak memory", "train s", "time s"])
    cells = []
    for r in s:
        p = _count(r["params"]) + (f" ({100 * r['params'] / full['params']:.1f}%)" if full else "")
        vals = []
        for m in metrics:
            v = r.get(f"dev_{m}")
            txt = "-" if v is None else f"{v:.4f}"
            if m == main and r.get("std") is not None:
                txt += f" ± {r['std']:.4f}"
            vals.append(txt)
        mem = "n/a" if r["peak_memory_gb"] is None else \
            f"{'≤ ' if r.get('peak_memory_upper_bound') else ''}{r['peak_memory_gb']:.2f} GB"
        cells.append([r["method"], p] + vals + [f"{r['lr']:g}", r["best_epoch"], mem, f"{r['train_s']:.1f}",
                                                   f"{r['time_s']:.1f}"])
    return head, cells


def describe(result: dict) -> str:
    c, d = result["config"], result["device"]
    mem = ("peak device memory from JAX's memory stats, a process-wide high-water mark: '≤' marks a run "
           "that stayed below an earlier run's peak (benchmarks/ measures runs in isolation)"
           if d["platform"] != "cpu" else
           "peak memory n/a on CPU (JAX reports no device memory stats; results.json has the process's peak RSS)")
    return (f"{reports.model_phrase(c)}; "
            f"task {c['task']} ({c['task_kind']}): {c['n_train_examples']} training and {c['n_dev_examples']} dev "
            f"examples; compressed layers {','.join(map(str, c['layers']))} to width {c['width']} "
            f"(k-means n_init={c['n_init']}); {c['epochs']} epochs, batch {c['batch_size']}, AdamW (0.9, 0.98), "
            f"eps 1e-6, weight decay {c['weight_decay']}, linear decay after {c['warmup']:.0%} warm-up"
            f"{', clip ' + str(c['clip']) if c['clip'] else ''}; lr grid {', '.join(f'{x:g}' for x in c['lrs'])}, "
            f"seeds {', '.join(map(str, c['seeds']))}; the dev metric of the best epoch is reported, at the lr with "
            f"the best mean over seeds; {mem}; device {d['platform']} ({d['kind']}).")


def write_markdown(result: dict) -> str:
    head, cells = table_rows(result)
    return (f"# Fine-tuning: {result['config']['model']} on {result['config']['task']}\n\n{describe(result)}\n\n"
            f"{reports.markdown_table(head, cells)}\n\ntrain s: the training epochs (compilation included); "
            f"time s: compression, optional layer-wise tuning, training and dev evaluation. "
            f"{reports.run_footer(result)}\n")


def learning_curves(result: dict, path: Optional[str | Path] = None) -> bytes:
    """Train loss and the dev metric per epoch, one line per method (its picked lr, first seed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metric = result["config"]["metric"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    for s in result["summary"]:
        r = next(r for r in result["rows"] if r["method"] == s["method"] and r["lr"] == s["lr"])
        ep = [h["epoch"] for h in r["history"]]
        axes[0].plot(ep, [h["train_loss"] for h in r["history"]], marker="o", label=s["method"])
        axes[1].plot(ep, [h[metric] for h in r["history"]], marker="o", label=s["method"])
    from matplotlib.ticker import MaxNLocator
    for ax, t in zip(axes, ("train loss", f"dev {metric}")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[1].legend(fontsize=7)
    return reports.save_figure(fig, path)


COLUMNS = ("method", "params", "mlp_params", "lr", "metric", "value", "std", "best_epoch", "n_seeds",
           "peak_memory_gb", "train_s", "time_s")


def write_reports(result: dict, out_dir: str | Path) -> dict:
    """results.json, results.csv (one line per method), rows.csv (every run), results.md,
    learning_curves.png, finetune.png in `out_dir` (atomic each)."""
    out = Path(out_dir)
    files = {"json": out / "results.json", "csv": out / "results.csv", "rows": out / "rows.csv",
             "md": out / "results.md", "curves": out / "learning_curves.png", "png": out / "finetune.png"}
    reports.write_json(files["json"], result)
    extra = sorted({k for r in result["summary"] for k in r if k.startswith("dev_")})
    atomic_write(files["csv"], reports.csv_text(result["summary"], list(COLUMNS) + extra))
    atomic_write(files["rows"], reports.csv_text(result["rows"], ["method", "task", "lr", "seed", "params", "metric",
                                                                  "value", "best_epoch", "train_s", "time_s"]))
    atomic_write(files["md"], write_markdown(result))
    learning_curves(result, files["curves"])
    s = result["summary"]
    metric = result["config"]["metric"]
    reports.bar_panels([(f"dev {metric}", {"best epoch": [r["value"] for r in s]}),
                        ("trainable params (M)", {"params": [r["params"] / 1e6 for r in s]}),
                        ("train time (s)", {"time": [r["train_s"] for r in s]})],
                       [r["method"] for r in s], files["png"], log_if_spread=math.inf)
    return files


def default_out_dir(plan: Plan, root: str | Path = "results/finetune") -> Path:
    import re
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{Path(plan.config.model.rstrip('/')).name}-{plan.task.name}")
    return Path(root) / f"{name}-{plan.config_hash[:8]}"


__all__ = ["FinetuneRunConfig", "Plan", "prepare", "run", "run_row", "compress_variant", "summary", "table_rows",
           "describe", "write_reports", "learning_curves", "default_out_dir", "config_hash", "row_id", "row_tag",
           "FULL", "DEFAULT_METHODS", "check_settings"]
