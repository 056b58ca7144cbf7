"""The perplexity driver: token-weighted sliding-window perplexity of a decoder LM (or of an
encoder-decoder's decoder conditioned through its encoder, `eval.perplexity`) on one local
text file, for the original model and for each chosen compressed model (one row per method).

`prepare(config)` checks everything (methods, options, window settings, the text file, the
model being a decoder with an LM head, max_length against its positions, layers, width, the
text having at least 2 tokens) and loads model and text before any compression or forward;
`run(plan, out_dir)` does the work. Each method's row is saved as soon as it is finished and
reused when its tag matches, so an interrupted run resumes. The measure itself is
`ntkfuse.eval.perplexity.sliding_window_nll`.
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np

from .. import __version__, validate
from ..checkpoints import load
from ..data import DataError, read_text, tokenize_text
from ..eval.perplexity import PerplexityError, check_settings as check_windows, sliding_window_nll
from ..files import atomic_write
from . import hashing, reports
from .compare import default_layers, is_random, method_key, method_options, parse_list
from .device import describe_device
from .records import timestamp, versions
from .store import open_store

FULL = "full"                 # the uncompressed model's row (as in the fine-tuning driver)
TOOL = "perplexity"
ROW_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class PerplexityRunConfig:
    """Settings of a run. None means "the default for this model" (resolved in `prepare`):
    max_length min(1024, the model's positions), stride max_length // 2, and for the
    compressed models ntk_compare's layers (the last two thirds) and width (D/4)."""
    model: str = "gpt2"
    text: Optional[str] = None              # a local UTF-8 text file
    max_length: Optional[int] = None
    stride: Optional[int] = None
    batch_size: int = 8                     # windows per forward
    methods: tuple = ()                     # compressed variants; the full model always runs
    layers: Optional[Any] = None
    width: Optional[int] = None
    seed: int = 0                           # key of the random methods (ntk_compare's method_key)
    n_init: int = 3                         # k-means restarts (fusion, cluster)
    method_options: Mapping = dataclasses.field(default_factory=dict)
    dtype: str = "float32"                  # params dtype; the log-softmax is float32 either way

    def replace(self, **kw) -> "PerplexityRunConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["methods"] = list(parse_list(self.methods) or ())
        d["method_options"] = {k: dict(v) for k, v in dict(self.method_options).items()}
        return d


@dataclasses.dataclass
class Plan:
    config: PerplexityRunConfig
    methods: tuple           # "full" first, then the compressed ones
    layers: tuple
    width: int
    max_length: int
    stride: int
    ids: np.ndarray          # the whole text, tokenized once
    cfg: Any
    params: Any
    model_path: str
    config_hash: str = ""

    def resolved(self) -> dict:
        d = self.config.to_dict()
        d.update(methods=list(self.methods), layers=list(self.layers), width=self.width, max_length=self.max_length,
                 stride=self.stride, n_tokens=int(len(self.ids)), model_path=self.model_path,
                 model_config=self.cfg.to_dict())
        return d


def check_settings(c: PerplexityRunConfig) -> tuple:
    """Checks that need no model or text; returns the compressed methods."""
    e = PerplexityError
    from ..compress import check_method_options, check_methods
    methods = tuple(m for m in check_methods(parse_list(c.methods) or (), error=e, also=(FULL,)) if m != FULL)
    check_method_options(c.method_options, error=e)
    validate.check_positive("n_init", c.n_init, integer=True, error=e)
    if isinstance(c.seed, bool) or not isinstance(c.seed, (int, np.integer)) or c.seed < 0:
        raise e(f"seed must be a non-negative integer, got {c.seed!r}")
    validate.check_choice("dtype", c.dtype, ("float32", "fp32", "bfloat16", "bf16"), error=e)
    check_windows(None, c.max_length, c.stride, c.batch_size)
    if c.text is None:
        raise e("no text file given (--text FILE)")
    return methods


def prepare(config: PerplexityRunConfig, loaded=None) -> Plan:
    """Validate and resolve `config`, read the text, load the model, tokenize the text once.
    Raises PerplexityError, DataError, CheckpointError (ValueErrors with one-line messages)
    before any compression or forward."""
    methods = check_settings(config)
    text = read_text(config.text)          # a bad file should not wait for a model to load
    if loaded is None:
        loaded = load(config.model, config.dtype)
    cfg, params, path, tok = loaded
    max_length, stride = check_windows(cfg, config.max_length, config.stride, config.batch_size)
    if tok is None:
        raise DataError(f"{path}: the model has no tokenizer; a checkpoint directory needs tokenizer files")
    L, D = cfg.num_layers, cfg.intermediate
    layers = validate.parse_layers(config.layers, error=PerplexityError) or default_layers(L)
    layers = tuple(sorted(validate.check_layers(layers, L, error=PerplexityError)))
    width = validate.check_width(D // 4 if config.width is None else config.width, D, error=PerplexityError)
    block = params["layers"][layers[0]]["mlp"]
    refused = [m for m in methods if m in getattr(block, "unsupported_methods", ())]
    if refused:
        raise PerplexityError(f"{', '.join(refused)} do{'es' if len(refused) == 1 else ''} not apply to the "
                              f"model's {type(block).__name__} blocks")
    ids = tokenize_text(tok, text)
    if len(ids) < 2:
        raise PerplexityError(f"{config.text}: the text has {len(ids)} token{'' if len(ids) == 1 else 's'}; "
                              "perplexity needs at least 2")
    plan = Plan(config, (FULL,) + methods, layers, width, max_length, stride, ids, cfg, params, str(path))
    plan.config_hash = config_hash(plan)
    return plan


def config_hash(plan: Plan) -> str:
    """Everything that determines every row besides its method, options and seed."""
    c = plan.config
    key = {"version": __version__, "tool": TOOL, "model": c.model, "model_config": plan.cfg.to_dict(),
           "dtype": c.dtype, "max_length": plan.max_length, "stride": plan.stride, "layers": plan.layers,
           "width": plan.width}
    return hashing.config_hash(key, {"ids": plan.ids})


def row_options(plan: Plan, method: str) -> dict:
    return method_options(plan.config, method) if method != FULL else {}


def row_seed(plan: Plan, method: str) -> Optional[int]:
    return plan.config.seed if method != FULL and is_random(method) else None


def row_tag(plan: Plan, method: str) -> str:
    return hashing.tag(plan.config_hash, method, row_options(plan, method), row_seed(plan, method), ROW_FORMAT)


def compress_variant(plan: Plan, method: str):
    """(params, seconds) of `method` at the plan's layers and width; the full model as is."""
    if method == FULL:
        return plan.params, 0.0
    from .. import compress as C
    t0 = time.perf_counter()
    new = C.compress(plan.cfg, plan.params, method, plan.layers, plan.width, method_key(plan.config.seed, method),
                     **row_options(plan, method))
    jax.block_until_ready(jax.tree_util.tree_leaves(new))
    return new, time.perf_counter() - t0


def run_row(plan: Plan, method: str, progress: bool = False) -> dict:
    from ..compress import param_count
    params, compress_s = compress_variant(plan, method)
    t0 = time.perf_counter()
    r = sliding_window_nll(plan.cfg, params, plan.ids, plan.max_length, plan.stride, plan.config.batch_size,
                           progress=progress, desc=method)
    return {"method": method, "seed": row_seed(plan, method), "options": row_options(plan, method),
            "params": param_count(params), "mlp_params": param_count(params, plan.layers), **r.to_dict(),
            "bits_per_token": r.mean_nll / math.log(2), "compress_s": compress_s,
            "eval_s": time.perf_counter() - t0}


def run(plan: Plan, out_dir: str | Path, *, progress: bool = True, fresh: bool = False,
        log: Callable[[str], None] = lambda s: None) -> dict:
    """One row per method of `plan` (the full model first), reusing finished rows in
    `out_dir`; returns the result dict that `write_reports` writes."""
    started = time.perf_counter()
    store = open_store(out_dir, plan.config_hash, plan.resolved(), tool=TOOL, fresh=fresh, error=PerplexityError)
    rows, reused = [], []
    for method in plan.methods:
        tag = row_tag(plan, method)
        row = store.load_row((method,), tag)
        if row is not None:
            reused.append(method)
        else:
            log(f"{method}: {'' if method == FULL else 'compressing, '}evaluating ...")
            row = store.save_row((method,), run_row(plan, method, progress), tag)
        rows.append(row)
    if reused:
        log(f"reused {len(reused)} finished row(s) from {out_dir}: {', '.join(reused)}")
    return {"tool": TOOL, "config_hash": plan.config_hash, "config": plan.resolved(), "rows": rows,
            "reused": reused, "versions": versions(), "device": describe_device(), "timestamp": timestamp(),
            "wall_s": time.perf_counter() - started}


# --------------------------------------------------------------------------- tables


def _count(n) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else (f"{n / 1e3:.1f}k" if n >= 1e3 else str(n))


def table_rows(result: dict) -> tuple[list, list]:
    rows = result["rows"]
    full = next((r for r in rows if r["method"] == FULL), None)
    head = ["method", "params", "perplexity", "vs full", "NLL/token", "scored tokens", "windows", "eval s"]
    cells = []
    for r in rows:
        p = _count(r["params"]) + (f" ({100 * r['params'] / full['params']:.1f}%)" if full else "")
        ratio = f"×{r['perplexity'] / full['perplexity']:.3f}" if full else "-"
        cells.append([r["method"], p, f"{r['perplexity']:.4f}", ratio, f"{r['mean_nll']:.5f}", str(r["tokens"]),
                      str(r["windows"]), f"{r['eval_s']:.1f}"])
    return head, cells


def describe(result: dict) -> str:
    c, d = result["config"], result["device"]
    comp = (f"compressed layers {','.join(map(str, c['layers']))} to width {c['width']} (seed {c['seed']}, "
            f"k-means n_init {c['n_init']})" if len(c["methods"]) > 1 else "no compressed models")
    return (f"{reports.model_phrase(c, c['dtype'])}; text {c['text']} ({c['n_tokens']} tokens); windows of "
            f"{c['max_length']} tokens, stride {c['stride']}, {c['batch_size']} per forward; perplexity = "
            f"exp(total NLL / scored tokens), token-weighted; {comp}; device {d['platform']} ({d['kind']}).")


def write_markdown(result: dict) -> str:
    head, cells = table_rows(result)
    return (f"# Perplexity: {result['config']['model']} on {Path(result['config']['text']).name}\n\n"
            f"{describe(result)}\n\n{reports.markdown_table(head, cells, 'lrrrrrrr')}\n\n"
            f"vs full: perplexity ratio to the full model; eval s: the windows' forwards (compilation "
            f"included). {reports.run_footer(result)}\n")


COLUMNS = ("method", "seed", "params", "mlp_params", "perplexity", "nll", "mean_nll", "bits_per_token", "tokens",
           "n_tokens", "windows", "max_length", "stride", "compress_s", "eval_s")


def write_reports(result: dict, out_dir: str | Path) -> dict:
    """results.json, results.csv (one line per method) and results.md in `out_dir` (atomic each)."""
    out = Path(out_dir)
    files = {"json": out / "results.json", "csv": out / "results.csv", "md": out / "results.md"}
    reports.write_json(files["json"], result)
    atomic_write(files["csv"], reports.csv_text(result["rows"], COLUMNS))
    atomic_write(files["md"], write_markdown(result))
    return files


def default_out_dir(plan: Plan, root: str | Path = "results/perplexity") -> Path:
    c = plan.config
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{Path(c.model.rstrip('/')).name}-{Path(c.text).stem}")
    return Path(root) / f"{name}-{plan.config_hash[:8]}"


__all__ = ["PerplexityRunConfig", "Plan", "prepare", "run", "run_row", "compress_variant", "check_settings",
           "table_rows", "describe", "write_reports", "default_out_dir", "config_hash", "row_tag", "FULL"]
