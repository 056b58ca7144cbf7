"""One comparison run: compress chosen MLP blocks with every method and measure what
each does to parameters, outputs and the empirical NTK (METHOD.md §2-3).

`prepare(config)` checks everything that can be wrong (methods, layers, width, data,
model, output) before any compression or kernel work and returns a `Plan`;
`run(plan, out_dir)` does the work. Each method's result is written (atomically) as
soon as it is done, tagged with a hash of everything that determines it, and is
reused when a later run has the same hash, so an interrupted run loses nothing: the
reference kernel is cached the same way. `write_reports` produces CSV, JSON,
markdown and PNG plots.

Methods that depend on a random draw (`compress.RANDOM_METHODS`: the k-means
initialisation of fusion/cluster, sketch's projection, mmd's particles) run once per
seed of `CompareConfig.seeds`, the others once; a row is one (method, seed) and the
report gives mean ± std over seeds (`spread`). Besides the Frobenius errors a row holds
per-layer kernel errors (the kernel restricted to one compressed layer's MLP), the
centred kernel alignment with the original kernel, the kernel's eigenvalue spectrum and,
on a labelled set, the cross-validated accuracy of kernel classification with that
kernel (the "kernel view" of fine-tuning).
"""
from __future__ import annotations

import concurrent.futures as cf
import contextvars
import dataclasses
import io
import math
import os
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
from . import hashing, keys, reports, spread
from .device import describe_device
from .records import timestamp, versions
from .store import open_store

KERNEL_KINDS = ("ntk", "sign")
NTK_PARAMS = ("compressed", "all-mlps", "all")
OUTPUTS = ("class-prob", "target-logprob")
PRECISIONS = ("highest", "default")
DEFAULT_N_INIT = 3  # reference: 30 restarts; 3 keeps the default run well inside 2 minutes on a 2-core CPU
DEFAULT_SEEDS = (0, 1, 2)  # three draws of every random method: the default run stays near 2 minutes on 2 CPU cores
DEFAULT_TASK_EXAMPLES = 100  # the whole shipped sentiment sample (50/50 labels)
DEFAULT_TASK_FOLDS = 5
TASK_RIDGE = 1e-6   # relative ridge of kernel classification (ntk.kernel_regression): a near-interpolating solve
PROTOCOLS = ("reference", "multi-layer")   # layer 0 only (the reference's setup) / the chosen layers


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
    seeds: tuple = DEFAULT_SEEDS             # random methods run once per seed; deterministic ones once
    output: Optional[str] = None             # None: class-prob (classifier) / target-logprob (LM)
    class_index: int = 0                     # class-prob: softmax(logits)[class_index]
    reduction: str = "sum"                   # target-logprob: sum | mean over target tokens
    n_init: int = DEFAULT_N_INIT             # k-means restarts (fusion, cluster)
    reference_protocol: bool = False         # the reference's setup: layer 0 only, kernel w.r.t. its MLP
    method_options: Mapping = dataclasses.field(default_factory=dict)  # {method: {option: value}}
    per_layer: bool = False                  # per-layer kernel errors (compressed layers, more than one); off by
                                             # default: 1 + len(layers) kernel compiles per parameter structure
    task_examples: int = DEFAULT_TASK_EXAMPLES   # labelled examples for kernel classification (0: off)
    task_folds: int = DEFAULT_TASK_FOLDS     # cross-validation folds of kernel classification
    chunk: Optional[int] = None              # examples per Jacobian chunk (memory only; not in the hash)
    scan_layers: bool = False                # kernels scan the layer stack (speed/memory only; not in the hash)
    autotune: bool = False                   # XLA's autotuned GEMMs in the one-shot programs (`ntkfuse.compile`;
                                             # speed only, not in the hash)
    precision: str = "highest"               # matmul precision of kernels and outputs: highest (float32) or
                                             # default (XLA's: TF32 on NVIDIA GPUs, faster; kernels 1.6e-4 off on an H100)
    jobs: int = 0                            # (method, seed) rows worked on at once so that their XLA compiles
                                             # overlap; 0: auto (`resolve_jobs`); speed only, not in the hash

    def replace(self, **kw) -> "CompareConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["method_options"] = {k: dict(v) for k, v in dict(self.method_options).items()}
        d["seeds"] = list(self.seeds)
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
    per_layer: bool = False                  # resolved: per-layer kernels are computed
    task_batch: Optional[dict] = None        # labelled set of kernel classification (None: skipped)
    task_labels: Optional[np.ndarray] = None
    num_classes: int = 0
    task_note: str = ""                      # why kernel classification is skipped, when it is
    extras_hash: str = ""                    # hash of per-layer/task settings and the task inputs

    def resolved(self) -> dict:
        d = self.config.to_dict()
        d.update(methods=list(self.methods), layers=list(self.layers), width=self.width, data=self.data,
                 output=self.output, output_layer=self.output_layer, model_path=self.model_path,
                 model_config=self.cfg.to_dict())
        d["kernel"] = list(self.config.kernel)
        d["per_layer"] = self.per_layer
        d["task"] = ({"examples": len(self.task_labels), "folds": self.config.task_folds, "ridge": TASK_RIDGE,
                      "num_classes": self.num_classes} if self.task_batch is not None else None)
        d["task_note"] = self.task_note
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


def is_random(method: str) -> bool:
    """Whether `method`'s result depends on its PRNG key (`compress.RANDOM_METHODS`)."""
    from ..compress import RANDOM_METHODS
    return method in RANDOM_METHODS


def row_ids(plan: "Plan") -> list[tuple]:
    """The units of work: (method, seed) for every random method and seed, (method,) once for
    a deterministic one, in method order."""
    return [(m, s) if is_random(m) else (m,) for m in plan.methods
            for s in (plan.config.seeds if is_random(m) else plan.config.seeds[:1])]


def parse_seeds(spec) -> tuple:
    """'0,1,2' / '0-4' / [0, 1] -> a tuple of distinct non-negative ints (CompareError otherwise)."""
    if isinstance(spec, int):
        spec = (spec,)
    try:
        if isinstance(spec, str):
            seeds = []
            for part in filter(None, (p.strip() for p in spec.split(","))):
                lo, _, hi = part.partition("-")
                seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
            seeds = tuple(seeds)
        else:
            seeds = tuple(int(s) for s in spec)
    except (TypeError, ValueError):
        raise CompareError(f"cannot parse seeds {spec!r}: use e.g. 0,1,2 or 0-4") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise CompareError(f"seeds must be distinct non-negative integers, got {spec!r}")
    return seeds


def method_options(config: CompareConfig, method: str) -> dict:
    opts = {"n_init": config.n_init} if method in ("fusion", "cluster") else {}
    opts.update(dict(config.method_options).get(method, {}))
    return opts


# --------------------------------------------------------------------------- validation


def check_settings(config: CompareConfig) -> tuple:
    """Checks that need no model: methods, kernels, choices, sizes. Returns the methods."""
    known = _methods()
    from ..compress import check_method_options, check_methods
    methods = check_methods(parse_list(config.methods) or known, error=CompareError)
    check_method_options(config.method_options, error=CompareError)
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
    validate.check_choice("--precision", config.precision, PRECISIONS, error=CompareError)
    if isinstance(config.jobs, bool) or not isinstance(config.jobs, int) or config.jobs < 0:
        raise CompareError(f"--jobs must be an integer >= 0 (0: auto), got {config.jobs!r}")
    parse_seeds(config.seeds)
    if not isinstance(config.task_examples, int) or config.task_examples < 0:
        raise CompareError(f"--task-examples must be an integer >= 0, got {config.task_examples!r}")
    if not isinstance(config.task_folds, int) or config.task_folds < 2:
        raise CompareError(f"--task-folds must be an integer >= 2, got {config.task_folds!r}")
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
    config = config.replace(seeds=parse_seeds(config.seeds))
    plan = Plan(config, methods, layers, width, data_spec, output, layers[-1], cfg, params, batch, n_tokens,
                str(path), "")
    plan.per_layer = bool(config.per_layer and config.ntk_params == "compressed" and len(layers) > 1)
    _prepare_task(plan, tok)
    plan.config_hash = config_hash(plan)
    plan.extras_hash = hashing.config_hash(
        {"per_layer": plan.per_layer, "task_folds": config.task_folds, "ridge": TASK_RIDGE,
         "labels": None if plan.task_labels is None else plan.task_labels.tolist()}, plan.task_batch or {})
    return plan


def _prepare_task(plan: Plan, tok) -> None:
    """The labelled set of kernel classification: the first `task_examples` examples of the
    run's data, when every one has a label and there are two classes or more and at least
    one example per fold; otherwise `task_note` says why it is skipped."""
    c = plan.config
    if c.task_examples == 0:
        plan.task_note = "kernel classification off (--task-examples 0)"
        return
    examples = load_examples(plan.data, c.task_examples)
    labels = [e.label for e in examples]
    if any(y is None for y in labels):
        plan.task_note = f"kernel classification skipped: {plan.data} has no labels"
        return
    y = np.asarray(labels, int)
    if len(set(y.tolist())) < 2 or len(y) < c.task_folds:
        plan.task_note = (f"kernel classification skipped: {len(y)} labelled examples with "
                          f"{len(set(y.tolist()))} class(es) do not fill {c.task_folds} folds")
        return
    batch = make_batch(plan.cfg, tok, examples, c.max_length)
    try:
        check_batch(plan.cfg, batch)
    except ValueError as e:
        raise DataError(f"{plan.data}: {e}") from None
    plan.task_batch, plan.task_labels, plan.num_classes = batch, y, int(y.max()) + 1


def cv_folds(labels, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold index of every example: stratified (each class spread evenly over the folds) after a
    fixed permutation, so every method and seed is scored on the same splits."""
    labels = np.asarray(labels)
    fold = np.empty(len(labels), int)
    rng = np.random.default_rng(seed)
    offset = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold[idx] = (np.arange(len(idx)) + offset) % n_folds
        offset += len(idx)
    return fold


def cv_accuracy(K, labels, n_folds: int, num_classes: int, ridge: float = TASK_RIDGE) -> float:
    """Cross-validated accuracy of kernel classification with kernel K (N, N) over all N
    labelled examples: each fold is predicted by `ntk.kernel_regression` trained on the
    others; the fraction of examples predicted correctly."""
    from .. import ntk
    K, labels = np.asarray(K, np.float64), np.asarray(labels)
    fold = cv_folds(labels, n_folds)
    correct = 0
    for f in range(n_folds):
        te, tr = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        acc = ntk.kernel_accuracy(K, labels, tr, te, num_classes=num_classes, ridge=ridge)
        correct += round(acc * len(te))
    return correct / len(labels)


def config_hash(plan: Plan) -> str:
    """Hash of everything that determines the reference kernel and every method's inputs
    (not the method list, not method options, not chunk, scan_layers, autotune or jobs); see `method_hash`."""
    c = plan.config
    key = {"version": __version__, "model": c.model, "model_config": plan.cfg.to_dict(), "layers": plan.layers,
           "width": plan.width, "ntk_params": c.ntk_params, "kernel": sorted(parse_list(c.kernel)),
           "output": plan.output, "class_index": c.class_index, "reduction": c.reduction,
           "reference_protocol": c.reference_protocol, "output_layer": plan.output_layer,
           "precision": c.precision}
    return hashing.config_hash(key, plan.batch)


# Bumped when a method's computation changes for the same settings (2: cluster shares fusion's
# k-means key; 3: rows per (method, seed) with per-layer errors, alignment, spectra, task accuracy),
# so rows saved by an older version are recomputed, never reused.
ROW_FORMAT = 3


def method_hash(plan: Plan, method: str, seed: Optional[int] = None) -> str:
    """Tag of one row: the run's hash, the per-layer/task settings, the method, its seed (random
    methods only) and its options (so changing --n-init recomputes fusion and cluster only)."""
    seed_part = [seed] if is_random(method) else []
    return hashing.tag(plan.config_hash, plan.extras_hash, method, *seed_part, method_options(plan.config, method),
                       ROW_FORMAT)


def default_out_dir(plan: Plan, root: str | Path = "results/ntk_compare") -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(plan.config.model.rstrip("/")).name or "model")
    return Path(root) / f"{name}-{plan.config_hash[:8]}"


# --------------------------------------------------------------------------- the work


def _kinds(plan: Plan) -> tuple:
    return tuple(k for k in KERNEL_KINDS if k in parse_list(plan.config.kernel))


def _kernels(plan: Plan, params, scalar, selector, batch=None, budget=None) -> dict:
    from .. import ntk
    ks = ntk.kernels(plan.cfg, params, plan.batch if batch is None else batch, output=scalar, selector=selector,
                     kinds=_kinds(plan), chunk=plan.config.chunk, scan_layers=plan.config.scan_layers,
                     memory_budget_bytes=budget)
    return {k: np.asarray(jax.device_get(ks[k]), np.float64) for k in _kinds(plan)}


def _all_kernels(plan: Plan, params, budget: Optional[int] = None) -> dict:
    """{"full": {kind: K}, "layers": {layer: {kind: K}} (per-layer runs), "task": {kind: K} (labelled set)}.
    `budget`: the kernels' memory budget in bytes (None: the engine's default)."""
    from .. import ntk
    scalar = _scalar_output(plan.config, plan.cfg, plan.output)
    out = {"full": _kernels(plan, params, scalar, _selector(plan), budget=budget), "layers": {}, "task": None}
    if plan.per_layer:
        out["layers"] = ntk.layer_kernels(plan.cfg, params, plan.batch, plan.layers, output=scalar,
                                          kinds=_kinds(plan), chunk=plan.config.chunk,
                                          scan_layers=plan.config.scan_layers, memory_budget_bytes=budget)
    if plan.task_batch is not None:
        out["task"] = _kernels(plan, params, scalar, _selector(plan), plan.task_batch, budget=budget)
    return out


def _flat(ks: dict) -> dict:
    flat = dict(ks["full"])
    flat.update({f"L{l}_{k}": v for l, d in ks["layers"].items() for k, v in d.items()})
    flat.update({f"task_{k}": v for k, v in (ks["task"] or {}).items()})
    return flat


def _unflat(flat: dict, plan: Plan) -> dict:
    kinds = _kinds(plan)
    return {"full": {k: flat[k] for k in kinds},
            "layers": {l: {k: flat[f"L{l}_{k}"] for k in kinds} for l in plan.layers} if plan.per_layer else {},
            "task": {k: flat[f"task_{k}"] for k in kinds} if plan.task_batch is not None else None}


def reference_kernels(plan: Plan, out_dir: Optional[Path], budget: Optional[int] = None) -> dict:
    """Kernels of the uncompressed model (`_all_kernels`), cached in out_dir/reference.npz
    under the config and extras hashes."""
    cache = out_dir / "reference.npz" if out_dir is not None else None
    if cache is not None and cache.exists():
        try:
            with np.load(cache) as z:
                if str(z["config_hash"]) == plan.config_hash and str(z["extras_hash"]) == plan.extras_hash:
                    return _unflat({k: z[k] for k in z.files}, plan)
        except Exception:
            pass  # unreadable or older cache: recompute
    ks = _all_kernels(plan, plan.params, budget)
    if cache is not None:
        buf = io.BytesIO()
        np.savez(buf, config_hash=np.asarray(plan.config_hash), extras_hash=np.asarray(plan.extras_hash),
                 **_flat(ks))
        atomic_write(cache, buf.getvalue())
    return ks


def reference_row(plan: Plan, K_ref: dict) -> dict:
    """What the original model's kernels give on their own: spectra and task accuracy."""
    from .. import ntk
    row = {"method": "original"}
    for k, K in K_ref["full"].items():
        row[f"{k}_spectrum"] = ntk.kernel_spectrum(K).tolist()
        row[f"{k}_cka"] = 1.0
    for k, K in (K_ref["task"] or {}).items():
        row[f"{k}_acc"] = cv_accuracy(K, plan.task_labels, plan.config.task_folds, plan.num_classes)
    return row


def _kmeans_for(plan: Plan, method: str, seed: int, cache: Optional[dict]):
    """(k-means of fusion/cluster, seconds spent on it, whether it came from `cache`).
    The cache key holds everything the k-means depends on besides the plan's params. With
    jobs > 1 cluster starts only after fusion of the same seed (`_run_concurrent`), so the two
    never compute one k-means at the same time."""
    from .. import compress as C
    opts = {**{k: C.OPTIONS[method][k] for k in KMEANS_OPTIONS}, **method_options(plan.config, method)}
    opts = {k: opts[k] for k in KMEANS_OPTIONS}
    ck = (plan.layers, plan.width, seed, tuple(sorted(opts.items())))
    if cache is not None and ck in cache:
        return cache[ck], 0.0, True
    t0 = time.perf_counter()
    km = C.kmeans_layers(plan.params, plan.layers, plan.width, method_key(seed, method), **opts)
    jax.block_until_ready(jax.tree_util.tree_leaves(km))
    if cache is not None:
        cache[ck] = km
    return km, time.perf_counter() - t0, False


def kernel_measures(plan: Plan, K_new: dict, K_ref: dict) -> dict:
    """Every kernel measure of one compressed model against the original: Frobenius errors
    (`ntk_abs`, `sign_rel`, ...), per layer (`sign_rel_L5`, ...), centred kernel alignment
    (`sign_cka`), eigenvalue spectrum (`sign_spectrum`) and task accuracy (`sign_acc`)."""
    from .. import ntk
    out = {f"{k}_{m}": float(v) for k in K_new["full"] for m, v in ntk.ntk_error(K_new["full"][k],
                                                                               K_ref["full"][k]).items()}
    for l, d in K_new["layers"].items():
        for k, K in d.items():
            out.update({f"{k}_{m}_L{l}": float(v) for m, v in ntk.ntk_error(K, K_ref["layers"][l][k]).items()})
    for k, K in K_new["full"].items():
        out[f"{k}_cka"] = ntk.centred_kernel_alignment(K, K_ref["full"][k])
        out[f"{k}_spectrum"] = ntk.kernel_spectrum(K).tolist()
    for k, K in (K_new["task"] or {}).items():
        out[f"{k}_acc"] = cv_accuracy(K, plan.task_labels, plan.config.task_folds, plan.num_classes)
    return out


def run_method(plan: Plan, method: str, K_ref: dict, kmeans_cache: Optional[dict] = None,
               seed: Optional[int] = None) -> dict:
    """Compress with one method (and one seed; default the first of the plan's) and measure it
    against the original (one result row). `kmeans_cache` (a dict kept across calls with the
    same plan) lets fusion and cluster share one k-means; the result is identical to
    computing it in each."""
    seed = plan.config.seeds[0] if seed is None else int(seed)
    new, info = compress_row(plan, method, seed, kmeans_cache)
    K_new, info["kernel_s"] = _timed(_all_kernels, plan, new)
    oe, info["out_err_s"] = _timed(row_output_error, plan, new)
    return assemble_row(plan, method, seed, new, K_new, oe, K_ref, info)


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def compress_row(plan: Plan, method: str, seed: int, kmeans_cache: Optional[dict] = None):
    """(compressed params, {"compress_s", k-means info}) of one (method, seed) row."""
    from .. import compress as C
    opts = method_options(plan.config, method)
    t0 = time.perf_counter()
    extra, info = {}, {}
    if method in KMEANS_METHODS:
        km, km_s, shared = _kmeans_for(plan, method, seed, kmeans_cache)
        extra["kmeans_result"] = km
        info = {"kmeans_s": km_s, "kmeans_reused": shared}
    new = C.compress(plan.cfg, plan.params, method, plan.layers, plan.width, method_key(seed, method),
                     **extra, **opts)
    jax.block_until_ready(jax.tree_util.tree_leaves(new))
    return new, {"compress_s": time.perf_counter() - t0, **info}


def row_output_error(plan: Plan, new) -> dict:
    """Output error of a compressed model at the plan's output layer and at the logits."""
    from .. import ntk
    # output_error indexes HF-style hidden states: layer l's output is cfg.hidden_state_index(l) (l + 1; an
    # encoder-decoder's decoder layers l + 2)
    return ntk.output_error(plan.cfg, plan.params, new, [plan.batch], plan.cfg.hidden_state_index(plan.output_layer))


def assemble_row(plan: Plan, method: str, seed: int, new, K_new: dict, oe: dict, K_ref: dict, info: dict) -> dict:
    """One result row from a row's compressed params, kernels, output error and timings. `time_s`
    is the sum of the row's own steps (with jobs > 1 rows overlap, so rows' times add up to more
    than the run's wall time)."""
    from .. import compress as C
    layers = plan.layers
    km_info = {k: info[k] for k in ("kmeans_s", "kmeans_reused") if k in info}
    return {
        "method": method,
        "seed": seed if is_random(method) else None,
        "options": method_options(plan.config, method),
        "mlp_params": C.param_count(new, layers),
        "mlp_params_orig": C.param_count(plan.params, layers),
        "mlp_nonzero": C.nonzero_params(new, layers),   # counted on the host: no per-shape compiles
        "total_params": C.param_count(new),
        "total_params_orig": C.param_count(plan.params),
        "out_err_layer": float(oe["layer"]),
        "out_err_logits": float(oe["logits"]),
        **kernel_measures(plan, K_new, K_ref),
        "compress_s": info["compress_s"],
        "kernel_s": info["kernel_s"],
        "out_err_s": info["out_err_s"],
        "time_s": info["compress_s"] + info["kernel_s"] + info["out_err_s"],
        **km_info,
        "block_kinds": sorted({type(get_mlp(new, l)).__name__ for l in layers}),
        "method_hash": method_hash(plan, method, seed),
    }


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
    """Run every (method, seed) of `plan` (reusing finished ones from `out_dir`); returns the
    result dict that `write_reports` writes: per-seed rows under "results", mean ± std per
    method under "summary". `out_dir=None` keeps everything in memory."""
    from ..compile import autotune
    with autotune(plan.config.autotune):
        return _in_precision(plan.config.precision, _run, plan, out_dir, progress, fresh, log)


MAX_AUTO_JOBS = 4


def resolve_jobs(jobs: int, todo: int) -> int:
    """Rows worked on at once. 0 (auto): on an accelerator up to 4 and at most half the CPU
    cores (XLA compiles on the host; each compile uses several threads), on a CPU 1 (there
    compiling and running compete for the same cores); never more than the rows to run."""
    if jobs == 0:
        jobs = 1 if jax.default_backend() == "cpu" else min(MAX_AUTO_JOBS, max(1, (os.cpu_count() or 1) // 2))
    return max(1, min(int(jobs), max(todo, 1)))


def _run(plan: Plan, out_dir: Optional[Path], progress: bool, fresh: bool, log: Callable[[str], None]) -> dict:
    from tqdm.auto import tqdm
    store = open_out_dir(plan, Path(out_dir), fresh) if out_dir is not None else None
    out_dir = store.root if store is not None else None
    started = time.perf_counter()
    ids = row_ids(plan)
    done, reused = {}, []
    for rid in ids:
        method, seed = _method_seed(plan, rid)
        row = store.load_row(rid, method_hash(plan, method, seed)) if store is not None else None
        if row is not None:
            done[rid] = row
            reused.append(rid[0] if len(plan.config.seeds) == 1 else _rid_str(rid))
    todo = [rid for rid in ids if rid not in done]
    jobs = resolve_jobs(plan.config.jobs, len(todo))
    log(f"reference kernels ({', '.join(parse_list(plan.config.kernel))}) of the original model"
        + (f", {len(todo)} method runs, {jobs} at a time" if jobs > 1 else "") + " ...")
    bar = tqdm(total=len(todo), desc="methods", unit="run", disable=not progress, leave=False)

    def finished(rid, row):
        if store is not None:
            store.save_row(rid, row)
        done[rid] = row
        bar.update(1)
        bar.set_postfix_str(" seed ".join(map(str, rid)))

    if jobs == 1:
        K_ref, ref_s = _timed(reference_kernels, plan, out_dir)
        kmeans_cache: dict = {}
        for rid in todo:
            method, seed = _method_seed(plan, rid)
            finished(rid, run_method(plan, method, K_ref, kmeans_cache, seed))
    else:
        K_ref, ref_s = _run_concurrent(plan, out_dir, todo, jobs, finished)
    bar.close()
    if reused:
        log(f"reused finished results from {out_dir}/methods: {', '.join(reused)}")
    rows = [done[rid] for rid in ids]
    ref_norm = {k: float(np.linalg.norm(v)) for k, v in K_ref["full"].items()}
    return {
        "tool": "ntk_compare",
        "config_hash": plan.config_hash,
        "config": plan.resolved(),
        "data": data_summary(plan),
        "reference": {"kernel_fro_norm": ref_norm, "kernel_size": int(next(iter(K_ref["full"].values())).shape[0]),
                      "time_s": ref_s, **reference_row(plan, K_ref)},
        "results": rows,
        "summary": summarise(rows),
        "reused": reused,
        "jobs": jobs,
        "versions": versions(),
        "device": describe_device(),
        "timestamp": timestamp(),
        "wall_s": time.perf_counter() - started,
    }


def _method_seed(plan: Plan, rid) -> tuple:
    return rid[0], (rid[1] if len(rid) > 1 else plan.config.seeds[0])


def _signature(params) -> tuple:
    """What decides which compiled programs a params tree needs: its tree (block kinds and their
    static fields) and every leaf's shape and dtype."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    return tree, tuple((tuple(x.shape), str(x.dtype)) for x in leaves)


def _in_precision(precision: str, fn, *args):
    """fn(*args) under the run's matmul precision (JAX keeps it per thread)."""
    with jax.default_matmul_precision(None if precision == "default" else precision):
        return fn(*args)


def _run_concurrent(plan: Plan, out_dir: Optional[Path], todo: list, jobs: int, finished) -> tuple:
    """The reference kernels and every row's steps (compress; then kernels and output error) as
    tasks on `jobs` threads, so that XLA compiles the programs of different block structures
    at the same time (compilation runs on the host with the GIL released; the device runs one
    program after another).

    A task is handed to the pool only when what it waits for has finished, so no thread sits
    idle: a later seed of a method after its first seed, cluster after fusion of the same seed
    (they share one k-means), and a step whose program another task compiles (same params
    structure, `_signature`; a row shaped like the original waits for the reference) after that
    task, whose compiled program it then reuses. Same programs and numbers as one at a time,
    except that kernel tasks plan within a share of the memory budget (the original-shaped ones
    half, the others the rest split between the other threads), which can change the engine's
    chunking but not its result beyond rounding. Rows are saved as they finish; an error
    cancels what has not started and is raised."""
    from ..ntk.kernels import default_memory_budget
    budget = default_memory_budget()
    ref_budget, row_budget = budget // 2, budget // (2 * max(jobs - 1, 1))
    precision, kmeans_cache = plan.config.precision, {}
    pool = cf.ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="ntk_compare")
    futures: dict = {}    # task name -> Future
    waiting: list = []    # (name, names it waits for, fn, args)

    def later(name, deps, fn, *args):
        waiting.append((name, [d for d in deps if d is not None], fn, args))

    def submit_ready():
        for item in list(waiting):
            name, deps, fn, args = item
            if all(d in futures and futures[d].done() for d in deps):
                waiting.remove(item)   # each task sees the caller's context variables (ntkfuse.compile.autotune)
                futures[name] = pool.submit(contextvars.copy_context().run, _in_precision, precision, fn, *args)

    orig = _signature(plan.params)
    first = {("k", orig): ("ref",), ("o", orig): ("ref_out",)}
    ids = {(rid[0], _method_seed(plan, rid)[1]): rid for rid in todo}
    later(("ref",), [], _timed, reference_kernels, plan, out_dir, ref_budget)
    later(("ref_out",), [], row_output_error, plan, plan.params)   # compiles the original's forward once
    for rid in todo:
        method, seed = _method_seed(plan, rid)
        deps = [first.get(("c", method))]
        if method == "cluster" and ("fusion", seed) in ids:
            deps.append(("c", ids[("fusion", seed)]))
        later(("c", rid), deps, compress_row, plan, method, seed, kmeans_cache)
        first.setdefault(("c", method), ("c", rid))
    handled, rows = set(), {}
    try:
        submit_ready()
        while waiting or len(handled) < len(futures):
            open_ = [f for n, f in futures.items() if n not in handled]
            if not open_:   # cannot happen: every task waits only for tasks created before it
                raise RuntimeError(f"ntk_compare: tasks wait for nothing running: {[w[0] for w in waiting]}")
            cf.wait(open_, return_when=cf.FIRST_COMPLETED)
            for name, fut in list(futures.items()):
                if name in handled or not fut.done():
                    continue
                handled.add(name)
                result = fut.result()       # a failed task raises here
                if name[0] == "c":          # compressed: its kernels and output error can be planned
                    rid, (new, info) = name[1], result
                    sig = _signature(new)
                    later(("k", rid), [first.get(("k", sig))], _timed, _all_kernels, plan, new,
                          ref_budget if sig == orig else row_budget)
                    later(("o", rid), [first.get(("o", sig), ("ref_out",))], _timed, row_output_error, plan, new)
                    first.setdefault(("k", sig), ("k", rid))
                    first.setdefault(("o", sig), ("o", rid))
                    rows[rid] = (new, info)
            submit_ready()
            ref_done = ("ref",) in handled
            for rid in [r for r in rows if ref_done and {("k", r), ("o", r)} <= handled]:
                new, info = rows.pop(rid)
                (K_new, info["kernel_s"]), (oe, info["out_err_s"]) = (futures[("k", rid)].result(),
                                                                      futures[("o", rid)].result())
                method, seed = _method_seed(plan, rid)
                finished(rid, assemble_row(plan, method, seed, new, K_new, oe, futures[("ref",)].result()[0], info))
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return futures[("ref",)].result()


def _rid_str(rid) -> str:
    return rid[0] if len(rid) == 1 else f"{rid[0]}@{rid[1]}"


def numeric_keys(rows: Sequence[Mapping]) -> list[str]:
    """Keys of the per-seed rows that are numbers to aggregate (not ids, counts of params, lists)."""
    keys = []
    for r in rows:
        for k, v in r.items():
            if k in ("seed",) or k in keys or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            keys.append(k)
    return keys


def summarise(rows: Sequence[Mapping]) -> list[dict]:
    """Mean, std (ddof=1) and per-seed values of every numeric measure, per method (`spread.aggregate`)."""
    out = spread.aggregate(rows, "method", numeric_keys(rows))
    for agg in out:
        agg["seeds"] = [r.get("seed") for r in rows if r["method"] == agg["method"]]
        agg["random"] = is_random(agg["method"])
    return out


# --------------------------------------------------------------------------- reports

COLUMNS = [  # (key in a row, CSV header)
    ("method", "method"), ("seed", "seed"), ("mlp_params", "mlp_params"), ("mlp_params_orig", "mlp_params_orig"),
    ("mlp_nonzero", "mlp_nonzero"), ("total_params", "total_params"), ("total_params_orig", "total_params_orig"),
    ("out_err_layer", "out_err_layer"), ("out_err_logits", "out_err_logits"), ("ntk_abs", "ntk_abs"),
    ("ntk_rel", "ntk_rel"), ("sign_abs", "sign_abs"), ("sign_rel", "sign_rel"), ("compress_s", "compress_s"),
    ("kernel_s", "kernel_s"), ("time_s", "time_s"),
]
# Measures compared across methods in the summary lines, plots and side-by-side tables:
# (key, name, lower is better).
MEASURES = [("ntk_rel", "NTK rel", True), ("sign_rel", "sign NTK rel", True), ("ntk_cka", "NTK CKA", False),
            ("sign_cka", "sign NTK CKA", False), ("ntk_acc", "NTK kernel acc", False),
            ("sign_acc", "sign kernel acc", False), ("out_err_layer", "out err", True),
            ("out_err_logits", "out err logits", True)]


def _extra_columns(rows) -> list:
    """CSV columns beyond COLUMNS that the rows hold: per-layer errors, alignment, accuracy."""
    base = {k for k, _ in COLUMNS}
    keys = [k for k in numeric_keys(rows) if k not in base and not k.startswith("kmeans")]
    return [(k, k) for k in keys]


def _fmt_count(n) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else (f"{n / 1e3:.1f}k" if n >= 1e3 else str(n))


def _fmt(x, digits=4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.3e}"


def _pm(agg: Mapping, key: str, digits=4) -> str:
    """'mean ± std' when the value comes from more than one seed, else the value."""
    if agg.get(key) is None:
        return "-"
    if agg.get("n", 1) > 1:
        return f"{_fmt(agg[key], digits)} ± {_fmt(agg.get(key + '_std'), 2)}"
    return _fmt(agg[key], digits)


def _summary(result: dict) -> list:
    """Per-method aggregates; results saved before seeds existed are their own one-seed summary."""
    return result.get("summary") or summarise(result["results"])


def _kinds_of(result: dict) -> list:
    return [k for k in KERNEL_KINDS if k in result["config"]["kernel"]]


def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the main table, mean ± std over seeds per method (shared by the
    console, markdown and analysis/render.py)."""
    c = result["config"]
    kinds = _kinds_of(result)
    layer = c.get("output_layer", c["layers"][-1])
    head = ["method", "seeds", f"MLP params (layers {_layer_str(c['layers'])})", "total params",
            f"out err L{layer}", "out err logits"]
    for k in kinds:
        name = "NTK" if k == "ntk" else "sign NTK"
        head += [f"{name} abs", f"{name} rel"]
    head += ["time s"]
    cells = []
    for r in _summary(result):
        frac = r["mlp_params"] / r["mlp_params_orig"] if r["mlp_params_orig"] else float("nan")
        mlp = f"{_fmt_count(r['mlp_params'])} ({100 * frac:.1f}%)"
        if r.get("mlp_nonzero") is not None and r["mlp_nonzero"] < 0.99 * r["mlp_params"]:
            mlp += f", nnz {_fmt_count(r['mlp_nonzero'])}"
        tot = f"{_fmt_count(r['total_params'])} ({100 * r['total_params'] / r['total_params_orig']:.1f}%)"
        row = [r["method"], str(r["n"]), mlp, tot, _pm(r, "out_err_layer"), _pm(r, "out_err_logits")]
        for k in kinds:
            row += [_pm(r, f"{k}_abs"), _pm(r, f"{k}_rel")]
        row += [f"{r['time_s']:.1f}"]
        cells.append(row)
    return head, cells


def kernel_view_rows(result: dict) -> Optional[tuple]:
    """Header and cells of the alignment / task-accuracy table (the original model first), or None."""
    kinds = _kinds_of(result)
    summ = _summary(result)
    if not any(f"{k}_cka" in r for r in summ for k in kinds):
        return None
    head = ["method"] + [f"{'NTK' if k == 'ntk' else 'sign NTK'} CKA" for k in kinds]
    has_acc = any(f"{k}_acc" in r for r in summ for k in kinds)
    if has_acc:
        head += [f"{'NTK' if k == 'ntk' else 'sign NTK'} kernel acc" for k in kinds]
    ref = dict(result.get("reference", {}), n=1)
    cells = []
    for r in [ref] + summ:
        row = [r.get("method", "original")] + [_pm(r, f"{k}_cka") for k in kinds]
        if has_acc:
            row += [_pm(r, f"{k}_acc", 3) for k in kinds]
        cells.append(row)
    return head, cells


def layer_rows(result: dict) -> Optional[tuple]:
    """Header and cells of the per-layer relative kernel errors, or None (no per-layer kernels)."""
    c, kinds = result["config"], _kinds_of(result)
    summ = _summary(result)
    if not any(f"{k}_rel_L{c['layers'][0]}" in r for r in summ for k in kinds):
        return None
    head = ["method"] + [f"{'NTK' if k == 'ntk' else 'sign'} rel L{l}" for k in kinds for l in c["layers"]]
    cells = [[r["method"]] + [_pm(r, f"{k}_rel_L{l}") for k in kinds for l in c["layers"]] for r in summ]
    return head, cells


def _layer_str(layers) -> str:
    layers = list(layers)
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def format_table(result: dict, markdown: bool = False) -> str:
    head, cells = table_rows(result)
    return reports.markdown_table(head, cells) if markdown else reports.text_table(head, cells)


def format_tables(result: dict, markdown: bool = False) -> str:
    """The main table, the kernel-view and per-layer tables (when measured), and the verdicts."""
    fmt = reports.markdown_table if markdown else reports.text_table
    parts = [format_table(result, markdown)]
    kv = kernel_view_rows(result)
    if kv:
        parts.append(fmt(*kv))
    lr = layer_rows(result)
    if lr:
        parts.append(fmt(*lr))
    note = result["config"].get("task_note")
    if note:
        parts.append(note)
    parts.append("\n".join(("- " if markdown else "") + v for v in verdicts(result)))
    return "\n\n".join(parts)


def compressing_methods(result: dict) -> list[str]:
    """Methods that reduce the compressed layers' MLP parameters (magnitude keeps the width and
    is not at the same budget, so it is left out of the verdicts)."""
    return [r["method"] for r in _summary(result) if r["mlp_params"] < r["mlp_params_orig"]]


def verdict(result: dict, key: str, name: str, lower_is_better: bool = True) -> Optional[str]:
    """One sentence: which compressing method is best on `key`, and whether its lead exceeds
    the spread (`spread.leader`: the one-std intervals do not overlap) or which are tied."""
    summ = {r["method"]: r for r in _summary(result) if r["method"] in compressing_methods(result)}
    # A measure that was not computed (e.g. kernel accuracy with --task-examples 0) is NaN: no verdict.
    stats = {m: (r[key], r.get(f"{key}_std", 0.0)) for m, r in summ.items()
             if r.get(key) is not None and np.isfinite(r[key])}
    if not stats:
        return None
    best, tied, leads = spread.leader(stats, lower_is_better)
    m, sd = stats[best]
    word = "lowest" if lower_is_better else "highest"
    if len(stats) == 1:
        return f"{name}: only {best} ({_fmt(m)})"
    if len(result["config"].get("seeds", [0])) < 2 and any(is_random(x) for x in stats):
        return f"{name}: lowest-mean {best} ({_fmt(m)}) from a single seed: no spread measured, no ranking claimed" \
            if lower_is_better else \
            f"{name}: highest {best} ({_fmt(m)}) from a single seed: no spread measured, no ranking claimed"
    if leads:
        return f"{name}: {word} {best} ({_fmt(m)} ± {_fmt(sd, 2)}), ahead of every other method by more than the spread"
    return (f"{name}: {word} mean {best} ({_fmt(m)} ± {_fmt(sd, 2)}), but tied within one std with "
            + ", ".join(f"{t} ({_fmt(stats[t][0])} ± {_fmt(stats[t][1], 2)})" for t in tied[1:]))


def verdicts(result: dict) -> list[str]:
    keys = [k for k, _, _ in MEASURES if k.split("_")[0] in _kinds_of(result)]
    lines = [v for k, n, low in MEASURES if k in keys for v in [verdict(result, k, n, low)] if v]
    left_out = [r["method"] for r in _summary(result) if r["method"] not in compressing_methods(result)
                and r["method"] != "original"]
    if lines and left_out:
        lines.insert(0, f"ranked among the methods that reduce the MLP parameters ({', '.join(left_out)} "
                        f"{'keeps' if len(left_out) == 1 else 'keep'} them and {'is' if len(left_out) == 1 else 'are'} "
                        "left out):")
    return lines


def describe(result: dict) -> str:
    """One paragraph stating what was measured (model, data, sizes, output, k-means restarts, seeds)."""
    c, d = result["config"], result["data"]
    scalar = (f"softmax(logits)[{c['class_index']}]" if c["output"] == "class-prob"
              else f"log-prob of the target tokens ({c['reduction']})")
    sel = {"compressed": f"the MLP params of layers {_layer_str(c['layers'])}", "all-mlps": "every MLP's params",
           "all": "all params"}[c["ntk_params"]]
    seeds = c.get("seeds", [c.get("seed", 0)])
    task = c.get("task")
    task_s = (f"; kernel classification: {task['folds']}-fold stratified cross-validation on the first "
              f"{task['examples']} labelled examples, ridge {task['ridge']:g}·tr(K)/N" if task else "")
    return (f"{reports.model_phrase(c)}; layers {_layer_str(c['layers'])} compressed to width {c['width']}"
            f"{' (reference protocol)' if c['reference_protocol'] else ''}; data {d['spec']}: {d['n_examples']} "
            f"examples, max length {c['max_length']} ({d['tokens']} tokens); scalar output {scalar}; NTK w.r.t. "
            f"{sel}; k-means n_init={c['n_init']} (reference 30); seeds {','.join(map(str, seeds))} (random "
            f"methods once per seed, mean ± std with ddof=1; deterministic ones once); output error = mean over "
            f"tokens of the L2 distance at layer {c['output_layer']}'s output and at the logits{task_s}; device "
            f"{result['device']['platform']} ({result['device']['kind']}).")


def write_csv(result: dict) -> str:
    """Per-(method, seed) rows: the COLUMNS, then per-layer errors, alignment and accuracy."""
    return reports.csv_text(result["results"], COLUMNS + _extra_columns(result["results"]))


def write_summary_csv(result: dict) -> str:
    """Per-method mean and std of every numeric measure."""
    summ = _summary(result)
    keys = [k for k in numeric_keys(result["results"]) if not k.startswith("kmeans")]
    cols = ["method", "n"] + [c for k in keys for c in (k, f"{k}_std")]
    return reports.csv_text(summ, cols)


def write_markdown(result: dict) -> str:
    return (f"# NTK comparison: {result['config']['model']}\n\n{describe(result)}\n\n"
            f"{format_tables(result, markdown=True)}\n\n"
            f"Errors are against the uncompressed model on the same inputs; NTK errors are "
            f"‖K'−K‖_F (abs) and ‖K'−K‖_F/‖K‖_F (rel); CKA is the centred kernel alignment with the "
            f"original's kernel; kernel acc is cross-validated kernel classification accuracy with the method's "
            f"own kernel. Values are mean ± std over seeds where a method is random; a method leads only "
            f"when its mean ± std interval does not overlap any other's. {reports.run_footer(result)}\n")


def _panel_measures(results: Sequence[dict]):
    kinds = [k for k in KERNEL_KINDS if any(k in r["config"]["kernel"] for r in results)]
    titles = {"ntk_rel": "relative NTK error", "sign_rel": "relative sign-NTK error",
              "sign_cka": "sign-NTK alignment (CKA)", "ntk_acc": "kernel acc (NTK)", "sign_acc": "kernel acc (sign NTK)",
              "out_err_layer": "output error (last compressed layer)", "out_err_logits": "output error (logits)"}
    keys = [f"{k}_rel" for k in kinds] + ["out_err_layer", "out_err_logits"]
    keys += [k for k in ("sign_cka", "ntk_acc", "sign_acc") if k.split("_")[0] in kinds
             and any(k in row for r in results for row in _summary(r))]
    return [(k, titles[k]) for k in keys]


def plot(results: Sequence[dict], path: Optional[str | Path] = None, labels: Optional[Sequence[str]] = None):
    """Bar charts with one-std error bars (one panel per measure, one bar group per method,
    one colour per run). Returns PNG bytes and, when `path` is given, writes them atomically."""
    methods = []
    for r in results:
        methods += [row["method"] for row in _summary(r) if row["method"] not in methods]
    labels = list(labels) if labels else [r["config"]["model"] for r in results]
    panels = []
    for key, title in _panel_measures(results):
        series = []
        for lab, r in zip(labels, results):
            by = {row["method"]: row for row in _summary(r)}
            vals = [by[m].get(key, np.nan) if m in by else np.nan for m in methods]
            errs = [by[m].get(f"{key}_std", 0.0) if m in by else np.nan for m in methods]
            series.append((lab, ([np.nan if v is None else v for v in vals],
                                 [np.nan if e is None else e for e in errs])))
        panels.append((title, series))
    return reports.bar_panels(panels, methods, path)


def plot_spectra(result: dict, path: Optional[str | Path] = None) -> bytes:
    """Eigenvalues (largest first) of the original's kernel and of each method's (seed-mean),
    one panel per kernel kind, symmetric-log axis (the sign kernel's symmetric part can have
    negative eigenvalues). Returns PNG bytes; writes them atomically when `path` is given."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kinds = [k for k in _kinds_of(result) if f"{k}_spectrum" in result.get("reference", {})]
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(5 * max(1, len(kinds)), 3.8))
    axes = np.atleast_1d(axes)
    for ax, k in zip(axes, kinds):
        ref = np.asarray(result["reference"][f"{k}_spectrum"])
        ax.plot(np.arange(1, len(ref) + 1), ref, "k-", lw=2.2, label="original")
        methods = []
        for row in result["results"]:
            if row["method"] not in methods and f"{k}_spectrum" in row:
                methods.append(row["method"])
        for m in methods:
            sp = np.mean([r[f"{k}_spectrum"] for r in result["results"] if r["method"] == m], axis=0)
            ax.plot(np.arange(1, len(sp) + 1), sp, lw=1.1, label=m)
        ax.set_yscale("symlog", linthresh=max(1e-12, 1e-4 * float(np.max(np.abs(ref)))))
        ax.set_title(f"eigenvalues of the {'NTK' if k == 'ntk' else 'sign NTK (symmetric part)'}", fontsize=9)
        ax.set_xlabel("index", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return reports.save_figure(fig, path)


def side_by_side(results: Sequence[dict], labels: Sequence[str]) -> str:
    """Methods as rows, one column per run and measure (mean ± std): the paper's table layout."""
    keys = [(k, n) for k, n, _ in MEASURES if k in ("ntk_rel", "sign_rel", "sign_cka", "sign_acc", "out_err_layer")
            and any(k in row for r in results for row in _summary(r))]
    head = ["method"] + [f"{lab}: {name}" for lab in labels for _, name in keys]
    methods = []
    for r in results:
        methods += [row["method"] for row in _summary(r) if row["method"] not in methods]
    cells = []
    for m in methods:
        row = [m]
        for r in results:
            agg = next((x for x in _summary(r) if x["method"] == m), {})
            row += [_pm(agg, k) for k, _ in keys]
        cells.append(row)
    return reports.markdown_table(head, cells)


def write_reports(result: dict, out_dir: str | Path) -> dict:
    """results.json, results.csv (per seed), summary.csv (mean, std), results.md,
    ntk_compare.png (error bars) and spectra.png in `out_dir` (atomic each)."""
    out_dir = Path(out_dir)
    files = {"json": out_dir / "results.json", "csv": out_dir / "results.csv",
             "summary_csv": out_dir / "summary.csv", "md": out_dir / "results.md",
             "png": out_dir / "ntk_compare.png"}
    reports.write_json(files["json"], result)
    atomic_write(files["csv"], write_csv(result))
    atomic_write(files["summary_csv"], write_summary_csv(result))
    atomic_write(files["md"], write_markdown(result))
    plot([result], files["png"])
    if any(f"{k}_spectrum" in result.get("reference", {}) for k in KERNEL_KINDS):
        files["spectra"] = out_dir / "spectra.png"
        plot_spectra(result, files["spectra"])
    return files


def protocol_label(result: dict) -> str:
    c = result["config"]
    return ("reference protocol (layer 0)" if c["reference_protocol"]
            else f"multi-layer (layers {_layer_str(c['layers'])})")


def write_protocols(results: Sequence[dict], out_dir: str | Path) -> dict:
    """protocols.md (each protocol's tables and a side-by-side table) and protocols.png (bars
    with error bars, one colour per protocol) in `out_dir`."""
    out_dir = Path(out_dir)
    labels = [protocol_label(r) for r in results]
    parts = ["# NTK comparison: both protocols\n"]
    for r, lab in zip(results, labels):
        parts.append(f"## {lab}\n\n{describe(r)}\n\n{format_tables(r, markdown=True)}\n")
    parts.append(f"## Side by side\n\n{side_by_side(results, labels)}\n")
    files = {"md": out_dir / "protocols.md", "png": out_dir / "protocols.png"}
    atomic_write(files["md"], "\n".join(parts))
    plot(results, files["png"], labels)
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
           "write_reports", "format_table", "format_tables", "table_rows", "kernel_view_rows", "layer_rows",
           "describe", "plot", "plot_spectra", "load_result", "side_by_side", "write_protocols", "protocol_label",
           "verdict", "verdicts", "summarise", "row_ids", "is_random", "parse_seeds", "cv_folds", "cv_accuracy",
           "kernel_measures", "compressing_methods", "MEASURES", "PROTOCOLS", "DEFAULT_SEEDS",
           "parse_list", "default_layers", "data_summary", "method_key", "open_out_dir", "KMEANS_METHODS", "ROW_FORMAT", "method_options", "config_hash", "method_hash", "default_out_dir",
           "KERNEL_KINDS", "NTK_PARAMS", "OUTPUTS", "DEFAULT_N_INIT"]
