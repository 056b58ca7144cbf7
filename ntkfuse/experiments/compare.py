"""One comparison run: compress chosen MLP blocks with every method and measure what
each does to parameters, outputs and the empirical NTK (METHOD.md §2-3).

`prepare(config)` checks everything that can be wrong (methods, layers, width, data,
model, output) before any compression or kernel work and returns a `Plan`;
`run(plan, out_dir)` does the work. Each method's result is written (atomically) as
soon as it is done, tagged with a hash of everything that determines it, and is
reused when a later run has the same hash, so an interrupted run loses nothing: the
reference kernel is cached the same way. `write_reports` produces CSV, JSON,
markdown and a PNG plot.
"""
from __future__ import annotations

import dataclasses
import io
import math
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from .. import __version__, validate
from ..checkpoints import load
from ..data import DataError, load_examples, make_batch
from ..files import atomic_write
from ..models import check_batch, get_mlp
from ..models.families import get_family
from . import hashing, keys, reports
from .device import describe_device
from .records import timestamp, versions
from .store import open_store

KERNEL_KINDS = ("ntk", "sign")
NTK_PARAMS = ("compressed", "all-mlps", "all")
OUTPUTS = ("class-prob", "target-logprob")
DEFAULT_N_INIT = 3  # reference: 30 restarts; 3 keeps the default run well inside 2 minutes on a 2-core CPU


class CompareError(ValueError):
    """Bad settings for a comparison run (named, with the valid choices)."""


def _methods():
    from ..compress import METHODS
    return tuple(METHODS)


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """Settings of a run. `None` means "the default for this model" (resolved in `prepare`)."""
    model: str = "minilm"
    methods: Optional[tuple] = None          # None: every method in ntkfuse.compress.METHODS
    layers: Optional[tuple] = None           # None: the last two thirds of the layers
    width: Optional[int] = None              # None: a quarter of the MLP width D
    ntk_params: str = "compressed"           # compressed | all-mlps | all
    kernel: tuple = KERNEL_KINDS             # subset of ("ntk", "sign")
    n_examples: int = 32
    max_length: int = 64
    data: Optional[str] = None               # None: sample:sentiment (encoders) / sample:webnlg (GPT-2)
    seed: int = 0
    output: Optional[str] = None             # None: class-prob (classifier) / target-logprob (LM)
    class_index: int = 0                     # class-prob: softmax(logits)[class_index]
    reduction: str = "sum"                   # target-logprob: sum | mean over target tokens
    n_init: int = DEFAULT_N_INIT             # k-means restarts (fusion, cluster)
    reference_protocol: bool = False         # the reference's setup: layer 0 only, kernel w.r.t. its MLP
    method_options: Mapping = dataclasses.field(default_factory=dict)  # {method: {option: value}}
    chunk: Optional[int] = None              # examples per Jacobian chunk (memory only; not in the hash)

    def replace(self, **kw) -> "CompareConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["method_options"] = {k: dict(v) for k, v in dict(self.method_options).items()}
        return d


@dataclasses.dataclass
class Plan:
    """A validated run: everything resolved, model and data loaded."""
    config: CompareConfig
    methods: tuple
    layers: tuple
    width: int
    data: str
    output: str
    output_layer: int
    cfg: Any
    params: Any
    batch: dict
    n_tokens: int
    model_path: str
    config_hash: str

    def resolved(self) -> dict:
        d = self.config.to_dict()
        d.update(methods=list(self.methods), layers=list(self.layers), width=self.width, data=self.data,
                 output=self.output, output_layer=self.output_layer, model_path=self.model_path,
                 model_config=self.cfg.to_dict())
        d["kernel"] = list(self.config.kernel)
        return d


# --------------------------------------------------------------------------- parsing helpers


def parse_list(spec) -> tuple:
    if spec is None:
        return None
    if isinstance(spec, str):
        return tuple(s.strip() for s in spec.split(",") if s.strip())
    return tuple(spec)


def default_layers(num_layers: int) -> tuple:
    """The last two thirds (MiniLM 6 -> 2..5; roberta-base/gpt2 12 -> 4..11, as the paper)."""
    n = max(1, round(2 * num_layers / 3))
    return tuple(range(num_layers - n, num_layers))


KMEANS_METHODS = ("fusion", "cluster")
KMEANS_OPTIONS = ("n_init", "max_iter", "tol")


def method_key(seed: int, method: str):
    """PRNG key of one method: independent of which other methods run and in which order.
    cluster uses fusion's key: both are built from the same k-means (METHOD.md §2), which a
    run computes once (`run_method`'s kmeans_cache) and which is the same run alone."""
    return keys.indexed_key(seed, _methods(), "fusion" if method in KMEANS_METHODS else method)


def method_options(config: CompareConfig, method: str) -> dict:
    opts = {"n_init": config.n_init} if method in ("fusion", "cluster") else {}
    opts.update(dict(config.method_options).get(method, {}))
    return opts


# --------------------------------------------------------------------------- validation


def check_settings(config: CompareConfig) -> tuple:
    """Checks that need no model: methods, kernels, choices, sizes. Returns the methods."""
    known = _methods()
    methods = parse_list(config.methods) or known
    bad = [m for m in methods if m not in known]
    if bad:
        raise CompareError(f"unknown method{'s' if len(bad) > 1 else ''} {', '.join(bad)}; "
                           f"known: {', '.join(known)}")
    if len(set(methods)) != len(methods):
        raise CompareError(f"a method is listed twice in {','.join(methods)}")
    from ..compress import OPTIONS
    for m, opts in dict(config.method_options).items():
        if m not in known:
            raise CompareError(f"options for unknown method {m!r}; known: {', '.join(known)}")
        validate.check_options(f"method {m}", opts, OPTIONS[m], error=CompareError)
    kinds = parse_list(config.kernel)
    if not kinds or any(k not in KERNEL_KINDS for k in kinds):
        raise CompareError(f"unknown kernel {','.join(kinds or ())!r}; choose from ntk, sign (or both)")
    validate.check_choice("--ntk-params", config.ntk_params, NTK_PARAMS, error=CompareError)
    if config.output is not None:
        validate.check_choice("--output", config.output, OUTPUTS, error=CompareError)
    validate.check_choice("reduction", config.reduction, ("sum", "mean"), error=CompareError)
    for name in ("n_examples", "max_length", "n_init"):
        validate.check_positive(f"--{name.replace('_', '-')}", getattr(config, name), integer=True,
                                error=CompareError)
    if config.max_length < 2:
        raise CompareError(f"--max-length must be >= 2, got {config.max_length}")
    if config.chunk is not None:
        validate.check_positive("chunk", config.chunk, integer=True, error=CompareError)
    if config.reference_protocol and config.layers is not None and \
            tuple(validate.parse_layers(config.layers, error=CompareError)) != (0,):
        raise CompareError("--reference-protocol compresses layer 0 only; drop --layers or use --layers 0")
    return methods


def _scalar_output(config: CompareConfig, cfg, name: str):
    from .. import ntk
    if name == "class-prob":
        if cfg.head != "classifier":
            raise CompareError(f"--output class-prob needs a classifier head; {cfg.family} has head {cfg.head!r} "
                               "(use target-logprob)")
        if not 0 <= config.class_index < cfg.num_labels:
            raise CompareError(f"class index {config.class_index} out of range 0..{cfg.num_labels - 1}")
        return ntk.class_prob(config.class_index)
    if cfg.head != "lm":
        raise CompareError(f"--output target-logprob needs a language-model head (GPT-2); {cfg.family} has head "
                           f"{cfg.head!r} (use class-prob)")
    return ntk.target_logprob(config.reduction)


def _selector(plan: "Plan"):
    from .. import ntk
    if plan.config.ntk_params == "compressed":
        return ntk.mlp_layers(plan.layers)
    return ntk.all_mlps() if plan.config.ntk_params == "all-mlps" else ntk.all_params()


def prepare(config: CompareConfig, loaded=None) -> Plan:
    """Validate and resolve `config`, load model and data. Raises CompareError, DataError,
    CheckpointError (all ValueErrors with one-line messages) before any heavy work."""
    methods = check_settings(config)
    # Data first: a bad file should not wait for a model to load.
    data_spec = config.data
    if data_spec is not None:
        examples = load_examples(data_spec, config.n_examples)
    cfg, params, path, tok = loaded if loaded is not None else load(config.model)
    if data_spec is None:
        data_spec = get_family(cfg.family).default_data
        examples = load_examples(data_spec, config.n_examples)
    L, D = cfg.num_layers, cfg.intermediate
    layers = (0,) if config.reference_protocol else (validate.parse_layers(config.layers, error=CompareError)
                                                     or default_layers(L))
    layers = tuple(sorted(validate.check_layers(layers, L, error=CompareError)))
    width = validate.check_width(D // 4 if config.width is None else config.width, D, error=CompareError)
    output = config.output or ("target-logprob" if cfg.head == "lm" else "class-prob")
    _scalar_output(config, cfg, output)
    batch = make_batch(cfg, tok, examples, config.max_length)
    try:
        check_batch(cfg, batch)
    except ValueError as e:
        raise DataError(f"{data_spec}: {e}") from None
    n_tokens = int(np.asarray(batch["attention_mask"]).sum())
    plan = Plan(config, methods, layers, width, data_spec, output, layers[-1], cfg, params, batch, n_tokens,
                str(path), "")
    plan.config_hash = config_hash(plan)
    return plan


def config_hash(plan: Plan) -> str:
    """Hash of everything that determines the reference kernel and every method's inputs
    (not the method list, not method options, not chunk); see `method_hash`."""
    c = plan.config
    key = {"version": __version__, "model": c.model, "model_config": plan.cfg.to_dict(), "layers": plan.layers,
           "width": plan.width, "ntk_params": c.ntk_params, "kernel": sorted(parse_list(c.kernel)),
           "seed": c.seed, "output": plan.output, "class_index": c.class_index, "reduction": c.reduction,
           "reference_protocol": c.reference_protocol, "output_layer": plan.output_layer}
    return hashing.config_hash(key, plan.batch)


# Bumped when a method's computation changes for the same settings (2: cluster shares fusion's
# k-means key), so rows saved by an older version are recomputed, never reused.
ROW_FORMAT = 2


def method_hash(plan: Plan, method: str) -> str:
    """Tag of one method's row: the run's hash plus that method's options (so changing
    --n-init recomputes fusion and cluster only)."""
    return hashing.tag(plan.config_hash, method, method_options(plan.config, method), ROW_FORMAT)


def default_out_dir(plan: Plan, root: str | Path = "results/ntk_compare") -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(plan.config.model.rstrip("/")).name or "model")
    return Path(root) / f"{name}-{plan.config_hash[:8]}"


# --------------------------------------------------------------------------- the work


def _kernels(plan: Plan, params, scalar, selector) -> dict:
    from .. import ntk
    kinds = tuple(k for k in KERNEL_KINDS if k in parse_list(plan.config.kernel))
    ks = ntk.kernels(plan.cfg, params, plan.batch, output=scalar, selector=selector, kinds=kinds,
                     chunk=plan.config.chunk)
    return {k: np.asarray(jax.device_get(ks[k]), np.float64) for k in kinds}


def reference_kernels(plan: Plan, out_dir: Optional[Path]) -> dict:
    """Kernels of the uncompressed model, cached in out_dir/reference.npz under the config hash."""
    cache = out_dir / "reference.npz" if out_dir is not None else None
    if cache is not None and cache.exists():
        try:
            with np.load(cache) as z:
                if str(z["config_hash"]) == plan.config_hash:
                    return {k: z[k] for k in z.files if k != "config_hash"}
        except Exception:
            pass  # unreadable cache: recompute
    scalar = _scalar_output(plan.config, plan.cfg, plan.output)
    ks = _kernels(plan, plan.params, scalar, _selector(plan))
    if cache is not None:
        buf = io.BytesIO()
        np.savez(buf, config_hash=np.asarray(plan.config_hash), **ks)
        atomic_write(cache, buf.getvalue())
    return ks


def _kmeans_for(plan: Plan, method: str, cache: Optional[dict]):
    """(k-means of fusion/cluster, seconds spent on it, whether it came from `cache`).
    The cache key holds everything the k-means depends on besides the plan's params."""
    from .. import compress as C
    opts = {**{k: C.OPTIONS[method][k] for k in KMEANS_OPTIONS}, **method_options(plan.config, method)}
    opts = {k: opts[k] for k in KMEANS_OPTIONS}
    ck = (plan.layers, plan.width, plan.config.seed, tuple(sorted(opts.items())))
    if cache is not None and ck in cache:
        return cache[ck], 0.0, True
    t0 = time.perf_counter()
    km = C.kmeans_layers(plan.params, plan.layers, plan.width, method_key(plan.config.seed, method), **opts)
    jax.block_until_ready(jax.tree_util.tree_leaves(km))
    if cache is not None:
        cache[ck] = km
    return km, time.perf_counter() - t0, False


def run_method(plan: Plan, method: str, K_ref: dict, kmeans_cache: Optional[dict] = None) -> dict:
    """Compress with one method and measure it against the original (one result row).
    `kmeans_cache` (a dict kept across calls with the same plan) lets fusion and cluster
    share one k-means; the result is identical to computing it in each."""
    from .. import compress as C
    from .. import ntk
    cfg, params, layers = plan.cfg, plan.params, plan.layers
    opts = method_options(plan.config, method)
    t0 = time.perf_counter()
    extra, km_info = {}, {}
    if method in KMEANS_METHODS:
        km, km_s, shared = _kmeans_for(plan, method, kmeans_cache)
        extra["kmeans_result"] = km
        km_info = {"kmeans_s": km_s, "kmeans_reused": shared}
    new = C.compress(cfg, params, method, layers, plan.width, method_key(plan.config.seed, method), **extra,
                     **opts)
    jax.block_until_ready(jax.tree_util.tree_leaves(new))
    t_compress = time.perf_counter() - t0
    scalar = _scalar_output(plan.config, cfg, plan.output)
    K_new = _kernels(plan, new, scalar, _selector(plan))
    t_kernel = time.perf_counter() - t0 - t_compress
    errs = {f"{k}_{m}": float(v) for k in K_new for m, v in ntk.ntk_error(K_new[k], K_ref[k]).items()}
    # output_error indexes HF-style hidden states: l + 1 is layer l's output.
    oe = ntk.output_error(cfg, params, new, [plan.batch], plan.output_layer + 1)
    total = time.perf_counter() - t0
    row = {
        "method": method,
        "options": opts,
        "mlp_params": C.param_count(new, layers),
        "mlp_params_orig": C.param_count(params, layers),
        "mlp_nonzero": C.nonzero_params(new, layers),   # counted on the host: no per-shape compiles
        "total_params": C.param_count(new),
        "total_params_orig": C.param_count(params),
        "out_err_layer": float(oe["layer"]),
        "out_err_logits": float(oe["logits"]),
        **errs,
        "compress_s": t_compress,
        "kernel_s": t_kernel,
        "time_s": total,
        **km_info,
        "block_kinds": sorted({type(get_mlp(new, l)).__name__ for l in layers}),
        "method_hash": method_hash(plan, method),
    }
    return row


def open_out_dir(plan: Plan, out_dir: Path, fresh: bool = False):
    """The run's result store: `out_dir`/methods/<method>.json rows tagged by `method_hash`,
    the reference kernel cache; another configuration's directory is refused unless `fresh`."""
    return open_store(out_dir, plan.config_hash, plan.resolved(), tool="ntk_compare", fresh=fresh,
                      rows="methods", tag_field="method_hash", caches=("reference.npz",), error=CompareError)


def data_summary(plan: Plan) -> dict:
    n, t = plan.batch["input_ids"].shape
    return {"spec": plan.data, "n_examples": int(n), "padded_length": int(t), "tokens": plan.n_tokens}


def run(plan: Plan, out_dir: Optional[Path] = None, *, progress: bool = True, fresh: bool = False,
        log: Callable[[str], None] = lambda s: None) -> dict:
    """Run every method of `plan` (reusing finished ones from `out_dir`); returns the result
    dict that `write_reports` writes. `out_dir=None` keeps everything in memory."""
    from tqdm.auto import tqdm
    store = open_out_dir(plan, Path(out_dir), fresh) if out_dir is not None else None
    out_dir = store.root if store is not None else None
    started = time.perf_counter()
    t0 = time.perf_counter()
    log(f"reference kernels ({', '.join(parse_list(plan.config.kernel))}) of the original model ...")
    K_ref = reference_kernels(plan, out_dir)
    ref_s = time.perf_counter() - t0
    rows, reused, kmeans_cache = [], [], {}
    bar = tqdm(plan.methods, desc="methods", unit="method", disable=not progress, leave=False)
    for method in bar:
        bar.set_postfix_str(method)
        row = store.load_row((method,), method_hash(plan, method)) if store is not None else None
        if row is not None:
            reused.append(method)
        else:
            row = run_method(plan, method, K_ref, kmeans_cache)
            if store is not None:
                store.save_row((method,), row)
        rows.append(row)
    bar.close()
    if reused:
        log(f"reused finished results from {out_dir}/methods: {', '.join(reused)}")
    ref_norm = {k: float(np.linalg.norm(v)) for k, v in K_ref.items()}
    return {
        "tool": "ntk_compare",
        "config_hash": plan.config_hash,
        "config": plan.resolved(),
        "data": data_summary(plan),
        "reference": {"kernel_fro_norm": ref_norm, "kernel_size": int(next(iter(K_ref.values())).shape[0]),
                      "time_s": ref_s},
        "results": rows,
        "reused": reused,
        "versions": versions(),
        "device": describe_device(),
        "timestamp": timestamp(),
        "wall_s": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------- reports

COLUMNS = [  # (key in a row, CSV header)
    ("method", "method"), ("mlp_params", "mlp_params"), ("mlp_params_orig", "mlp_params_orig"),
    ("mlp_nonzero", "mlp_nonzero"), ("total_params", "total_params"), ("total_params_orig", "total_params_orig"),
    ("out_err_layer", "out_err_layer"), ("out_err_logits", "out_err_logits"), ("ntk_abs", "ntk_abs"),
    ("ntk_rel", "ntk_rel"), ("sign_abs", "sign_abs"), ("sign_rel", "sign_rel"), ("compress_s", "compress_s"),
    ("kernel_s", "kernel_s"), ("time_s", "time_s"),
]


def _fmt_count(n) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else (f"{n / 1e3:.1f}k" if n >= 1e3 else str(n))


def _fmt(x, digits=4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.3e}"


def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the human table (shared by the console, markdown and analysis/render.py)."""
    c = result["config"]
    kinds = [k for k in KERNEL_KINDS if k in c["kernel"]]
    layer = c.get("output_layer", c["layers"][-1])
    head = ["method", f"MLP params (layers {_layer_str(c['layers'])})", "total params",
            f"out err L{layer}", "out err logits"]
    for k in kinds:
        name = "NTK" if k == "ntk" else "sign NTK"
        head += [f"{name} abs", f"{name} rel"]
    head += ["time s"]
    cells = []
    for r in result["results"]:
        frac = r["mlp_params"] / r["mlp_params_orig"] if r["mlp_params_orig"] else float("nan")
        mlp = f"{_fmt_count(r['mlp_params'])} ({100 * frac:.1f}%)"
        if r.get("mlp_nonzero") is not None and r["mlp_nonzero"] < 0.99 * r["mlp_params"]:
            mlp += f", nnz {_fmt_count(r['mlp_nonzero'])}"
        tot = f"{_fmt_count(r['total_params'])} ({100 * r['total_params'] / r['total_params_orig']:.1f}%)"
        row = [r["method"], mlp, tot, _fmt(r["out_err_layer"]), _fmt(r["out_err_logits"])]
        for k in kinds:
            row += [_fmt(r.get(f"{k}_abs")), _fmt(r.get(f"{k}_rel"))]
        row += [f"{r['time_s']:.1f}"]
        cells.append(row)
    return head, cells


def _layer_str(layers) -> str:
    layers = list(layers)
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def format_table(result: dict, markdown: bool = False) -> str:
    head, cells = table_rows(result)
    return reports.markdown_table(head, cells) if markdown else reports.text_table(head, cells)


def describe(result: dict) -> str:
    """One paragraph stating what was measured (model, data, sizes, output, k-means restarts)."""
    c, d = result["config"], result["data"]
    mc = c["model_config"]
    scalar = (f"softmax(logits)[{c['class_index']}]" if c["output"] == "class-prob"
              else f"log-prob of the target tokens ({c['reduction']})")
    sel = {"compressed": f"the MLP params of layers {_layer_str(c['layers'])}", "all-mlps": "every MLP's params",
           "all": "all params"}[c["ntk_params"]]
    return (f"model {c['model']} ({mc['family']}, {mc['num_layers']} layers, d={mc['hidden']}, "
            f"D={mc['intermediate']}); layers {_layer_str(c['layers'])} compressed to width {c['width']}"
            f"{' (reference protocol)' if c['reference_protocol'] else ''}; data {d['spec']}: {d['n_examples']} "
            f"examples, max length {c['max_length']} ({d['tokens']} tokens); scalar output {scalar}; NTK w.r.t. "
            f"{sel}; k-means n_init={c['n_init']} (reference 30); seed {c['seed']}; output error = mean over "
            f"tokens of the L2 distance at layer {c['output_layer']}'s output and at the logits; device "
            f"{result['device']['platform']} ({result['device']['kind']}).")


def write_csv(result: dict) -> str:
    return reports.csv_text(result["results"], COLUMNS)


def write_markdown(result: dict) -> str:
    return (f"# NTK comparison: {result['config']['model']}\n\n{describe(result)}\n\n"
            f"{format_table(result, markdown=True)}\n\n"
            f"Errors are against the uncompressed model on the same inputs; NTK errors are "
            f"‖K'−K‖_F (abs) and ‖K'−K‖_F/‖K‖_F (rel). Run {result['timestamp']}, config hash "
            f"{result['config_hash']}, wall time {result['wall_s']:.1f} s.\n")


def plot(results: Sequence[dict], path: Optional[str | Path] = None, labels: Optional[Sequence[str]] = None):
    """Bar charts (one panel per measure, one bar group per method, one colour per run).
    Returns PNG bytes and, when `path` is given, writes them atomically."""
    kinds = [k for k in KERNEL_KINDS if any(k in r["config"]["kernel"] for r in results)]
    measures = [(f"{k}_rel", "relative NTK error" if k == "ntk" else "relative sign-NTK error") for k in kinds]
    measures += [("out_err_layer", "output error (last compressed layer)"),
                 ("out_err_logits", "output error (logits)")]
    methods = []
    for r in results:
        methods += [row["method"] for row in r["results"] if row["method"] not in methods]
    labels = list(labels) if labels else [r["config"]["model"] for r in results]
    panels = []
    for key, title in measures:
        series = []
        for lab, r in zip(labels, results):
            by = {row["method"]: row for row in r["results"]}
            series.append((lab, [by[m].get(key, np.nan) if m in by else np.nan for m in methods]))
        panels.append((title, series))
    return reports.bar_panels(panels, methods, path)


def write_reports(result: dict, out_dir: str | Path) -> dict:
    """results.json, results.csv, results.md, ntk_compare.png in `out_dir` (atomic each)."""
    out_dir = Path(out_dir)
    files = {"json": out_dir / "results.json", "csv": out_dir / "results.csv", "md": out_dir / "results.md",
             "png": out_dir / "ntk_compare.png"}
    reports.write_json(files["json"], result)
    atomic_write(files["csv"], write_csv(result))
    atomic_write(files["md"], write_markdown(result))
    plot([result], files["png"])
    return files


def load_result(path: str | Path) -> dict:
    """A results.json (or the directory holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    r = reports.read_json(p)
    if not isinstance(r, dict) or r.get("tool") != "ntk_compare":
        raise CompareError(f"{p}: not an ntk_compare results.json")
    return r


__all__ = ["CompareConfig", "CompareError", "Plan", "prepare", "run", "run_method", "reference_kernels",
           "write_reports", "format_table", "table_rows", "describe", "plot", "load_result",
           "parse_list", "default_layers", "data_summary", "method_key", "open_out_dir", "KMEANS_METHODS", "ROW_FORMAT", "method_options", "config_hash", "method_hash", "default_out_dir",
           "KERNEL_KINDS", "NTK_PARAMS", "OUTPUTS", "DEFAULT_N_INIT"]
