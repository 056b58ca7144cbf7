"""Command-line entry points: `ntkfuse-compare` / `python scripts/ntk_compare.py`
(`compare_main`), `python scripts/fit_surrogates.py` (`fit_surrogates_main`),
`python scripts/finetune.py` (`finetune_main`) and `python scripts/perplexity.py`
(`perplexity_main`).

Bad input ends the program with one line on stderr and exit status 2, never a
traceback: every check runs in the driver (`ntkfuse.experiments.compare.prepare`,
`ntkfuse.experiments.surrogates.check_settings`) before heavy work.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

PROG = "ntk_compare"

CACHE_ENV = "NTKFUSE_CACHE_DIR"
DEFAULT_CACHE_DIR = "~/.cache/ntkfuse/jax"


def _log(line: str) -> None:
    """Progress for the entry points: stderr, flushed (stdout carries the result table)."""
    print(line, file=sys.stderr, flush=True)


def _input_error(prog: str, e: Exception) -> int:
    """Bad input: the error on one line of stderr (whitespace collapsed), exit status 2."""
    print(f"{prog}: error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
    return 2


def compile_cache_dir() -> str:
    """Where the entry points keep JAX's persistent compilation cache: `$NTKFUSE_CACHE_DIR`,
    else `~/.cache/ntkfuse/jax`."""
    return str(Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser())


def use_compile_cache(enabled: bool = True, directory: Optional[str] = None) -> Optional[str]:
    """Turn JAX's persistent compilation cache on (in `directory`, default `compile_cache_dir()`)
    or off, through `jax.config`; call it before anything compiles. A rerun of a script then
    loads its compiled programs instead of compiling them again (numbers are unchanged).
    Returns the directory, or None when off."""
    import jax
    if not enabled:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    directory = str(Path(directory).expanduser()) if directory else compile_cache_dir()
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", directory)
    return directory


def add_compile_cache_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-compile-cache", action="store_true",
                        help=f"do not use JAX's persistent compilation cache (default: on, in ${CACHE_ENV} "
                             f"or {DEFAULT_CACHE_DIR})")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Compress MLP blocks with each method and compare parameters, output error and the "
                    "empirical NTK (vanilla and sign) against the original model. With no arguments: real "
                    "MiniLM weights, the shipped sentiment sample, layers 2-5 from D=1536 to 384.")
    a = p.add_argument
    a("--recipe", help="a Python file whose get_config() returns a dict of settings; flags override it")
    a("--model", help="'minilm' (default, embedded), a local HF checkpoint directory, or a hub id")
    a("--methods", help="comma list of methods (default: all of fusion,cluster,sketch,prune,magnitude,svd,mmd)")
    a("--layers", help="layers to compress: '2-5' or '4,5,6' (default: the last two thirds)")
    a("--width", type=int, help="compressed MLP width k (default: D/4)")
    a("--ntk-params", choices=None, help="parameters the NTK differentiates: compressed (default), all-mlps, all")
    a("--kernel", help="ntk, sign, or both (default both; 'ntk,sign' also works)")
    a("--n-examples", type=int, help="number of examples (default 32)")
    a("--max-length", type=int, help="max tokens per example (default 64)")
    a("--data", help="sample:sentiment | sample:webnlg | a local .tsv/.csv/.jsonl file | a HF dataset "
                     "'name[/config][:split]' such as glue/sst2 (needs `datasets` and the hub)")
    a("--seeds", help="seeds of the random methods (fusion, cluster, sketch, mmd): '0,1,2' or '0-4' "
                      "(default 0,1,2); deterministic methods run once")
    a("--repeats", type=int, help="N seeds 0..N-1 (same as --seeds 0-(N-1))")
    a("--seed", type=int, help="one seed only (same as --seeds SEED)")
    a("--per-layer", action=argparse.BooleanOptionalAction, default=None,
      help="per-layer kernel errors of the compressed layers (default off: it multiplies kernel compilations)")
    a("--task-examples", type=int, help="labelled examples for kernel classification accuracy (default 100; 0: off)")
    a("--task-folds", type=int, help="cross-validation folds of kernel classification (default 5)")
    a("--protocols", help="run several protocols and render them side by side: 'reference,multi-layer' "
                          "(reference = layer 0 only; multi-layer = --layers or the default layers)")
    a("--output", help="scalar output: class-prob (encoders' default) or target-logprob (GPT-2's default)")
    a("--class-index", type=int, help="class c of class-prob = softmax(logits)[c] (default 0, as the reference)")
    a("--reduction", help="target-logprob over target tokens: sum (default) or mean")
    a("--n-init", type=int, help="k-means restarts for fusion/cluster (default 3; the reference uses 30)")
    a("--option", action="append", metavar="METHOD.KEY=VALUE",
      help="a method option, repeatable: e.g. sketch.keep=256, mmd.steps=100, fusion.max_iter=300")
    a("--reference-protocol", action="store_true", default=None,
      help="the reference's setup: compress layer 0 only, kernel w.r.t. layer 0's MLP, output error at layer 0")
    a("--chunk", type=int, help="examples per Jacobian chunk (memory only)")
    a("--scan-layers", action=argparse.BooleanOptionalAction, default=None,
      help="kernels run the layer stack as lax.scan over runs of identical layers (default off: same kernels; "
           "on an H100 it compiled 6%% faster but ran 27%% slower with 63%% more memory)")
    a("--autotune", action=argparse.BooleanOptionalAction, default=None,
      help="compile the kernels, output errors, k-means and mmd fit with XLA's autotuned Triton GEMMs (default "
           "off: on an H100 the NTK's first call took 51-67 s with them and 7.4-9.9 s without, the warm call "
           "0.210 s with them and 0.209-0.213 s without)")
    a("--precision", help="matmul precision of the kernels and outputs: highest (default: float32) or default "
      "(XLA's: TF32 on NVIDIA GPUs since Ampere, faster but the kernels 1.6e-4 relative off on an H100, and "
      "which GEMMs autotuning picks can change the numbers between runs)")
    a("--jobs", type=int, help="method runs worked on at once, so that their XLA compiles overlap (default 0: "
      "auto, up to 4 on a GPU/TPU, 1 on a CPU; speed only, same numbers)")
    a("--out", help="output directory (default results/ntk_compare/<model>-<config hash>)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help="reuse finished methods in --out when the configuration hash matches (the default)")
    g.add_argument("--fresh", action="store_true", help="recompute everything, overwriting --out")
    a("--no-progress", action="store_true", help="no progress bars")
    add_compile_cache_flag(p)
    return p


_FLAG_FIELDS = ("model", "methods", "layers", "width", "ntk_params", "kernel", "n_examples", "max_length", "data",
                "seeds", "output", "class_index", "reduction", "n_init", "reference_protocol", "chunk", "per_layer",
                "task_examples", "task_folds", "scan_layers", "autotune", "precision", "jobs")


def load_recipe(path: str) -> dict:
    """Settings from a recipe file: a module with `get_config()` returning a dict (keys are
    CompareConfig fields, plus optional 'out')."""
    from .experiments.compare import CompareConfig, CompareError
    p = Path(path)
    if not p.is_file():
        raise CompareError(f"recipe not found: {p}")
    spec = importlib.util.spec_from_file_location(f"_ntkfuse_recipe_{p.stem}", p)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as e:
        raise CompareError(f"recipe {p}: cannot be executed ({type(e).__name__}: {e})") from None
    if not callable(getattr(mod, "get_config", None)):
        raise CompareError(f"recipe {p}: defines no get_config()")
    cfg = dict(mod.get_config())
    known = {f.name for f in dataclasses.fields(CompareConfig)} | {"out", "seed", "protocols"}
    bad = sorted(set(cfg) - known)
    if bad:
        raise CompareError(f"recipe {p}: unknown settings {', '.join(bad)}; known: {', '.join(sorted(known))}")
    return cfg


def build_config(args: argparse.Namespace):
    """CompareConfig from defaults <- recipe <- flags; returns (config, out)."""
    from .experiments.compare import CompareConfig, CompareError, parse_list
    from .validate import parse_layers
    settings = load_recipe(args.recipe) if args.recipe else {}
    if "seed" in settings:                      # recipes may name one seed
        settings.setdefault("seeds", (settings.pop("seed"),))
    given = [n for n, v in (("--seeds", args.seeds), ("--repeats", args.repeats), ("--seed", args.seed)) if v is not None]
    if len(given) > 1:
        raise CompareError(f"give only one of {', '.join(given)}")
    if args.repeats is not None:
        if args.repeats < 1:
            raise CompareError(f"--repeats must be >= 1, got {args.repeats}")
        args.seeds = tuple(range(args.repeats))
    elif args.seed is not None:
        args.seeds = (args.seed,)
    for f in _FLAG_FIELDS:
        v = getattr(args, f)
        if v is not None:
            settings[f] = v
    out = settings.pop("out", None) if args.out is None else args.out
    settings.pop("out", None)
    protocols = parse_list(args.protocols if args.protocols is not None else settings.get("protocols"))
    settings.pop("protocols", None)
    if "kernel" in settings:
        k = settings["kernel"]
        settings["kernel"] = ("ntk", "sign") if k in ("both", "all") else parse_list(k)
    if "methods" in settings:
        settings["methods"] = parse_list(settings["methods"])
    if "layers" in settings and settings["layers"] is not None:
        settings["layers"] = parse_layers(settings["layers"], error=CompareError)
    if args.option:
        opts = {k: dict(v) for k, v in dict(settings.get("method_options", {})).items()}
        for spec in args.option:
            method, key, value = _parse_option(spec)
            opts.setdefault(method, {})[key] = value
        settings["method_options"] = opts
    if protocols is not None:
        from .experiments.compare import PROTOCOLS
        bad = [p for p in protocols if p not in PROTOCOLS]
        if bad or not protocols or len(set(protocols)) != len(protocols):
            raise CompareError(f"bad --protocols {','.join(protocols)!r}; choose from {', '.join(PROTOCOLS)}")
        if "reference_protocol" in settings:
            raise CompareError("--protocols and --reference-protocol exclude each other")
    return CompareConfig(**settings), out, protocols


def _parse_option(spec: str):
    import re

    from .experiments.compare import CompareError
    m = re.fullmatch(r"\s*([A-Za-z_]+)\.([A-Za-z_]+)\s*=\s*(.*?)\s*", spec)
    if not m:
        raise CompareError(f"cannot parse --option {spec!r}: use METHOD.KEY=VALUE, e.g. sketch.keep=256")
    raw = m.group(3)
    for conv in (int, float):
        try:
            return m.group(1), m.group(2), conv(raw)
        except ValueError:
            pass
    return m.group(1), m.group(2), {"none": None, "true": True, "false": False}.get(raw.lower(), raw)


def compare_main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    use_compile_cache(not args.no_compile_cache)
    t0 = time.perf_counter()
    out = None
    try:
        from .experiments import compare
        from .experiments.device import describe_device
        config, out, protocols = build_config(args)
        _log("loading model and data ...")
        t_load = time.perf_counter()
        if protocols is None:
            runs = [(compare.prepare(config), Path(out) if out else None)]
        else:   # every protocol checked (and the model loaded once) before any work
            from .checkpoints import load
            loaded = load(config.model)
            runs = [(compare.prepare(config.replace(reference_protocol=p == "reference",
                                                    layers=None if p == "reference" else config.layers),
                                     loaded), p) for p in protocols]
            root = Path(out) if out else compare.default_out_dir(runs[-1][0]).with_name(
                compare.default_out_dir(runs[-1][0]).name + "-protocols")
            runs = [(plan, root / name) for plan, name in runs]
        load_s = time.perf_counter() - t_load
        results, files, times = [], {}, []
        for plan, where in runs:
            out = where or compare.default_out_dir(plan)
            _log(compare.describe({"config": plan.resolved(), "data": compare.data_summary(plan),
                                  "device": describe_device()}))
            _log(f"methods: {', '.join(plan.methods)}; seeds {','.join(map(str, plan.config.seeds))}; results in {out}")
            t_run = time.perf_counter()
            result = compare.run(plan, out, progress=not args.no_progress, fresh=args.fresh, log=_log)
            t_rep = time.perf_counter()
            files.update({f"{out.name}/{k}" if protocols else k: v
                          for k, v in compare.write_reports(result, out).items()})
            times.append({"run_s": t_rep - t_run, "reports_s": time.perf_counter() - t_rep})
            results.append(result)
            _write_timings(out, {"load_s": load_s, **times[-1], "jobs": result["jobs"],
                                 "cli_s": time.perf_counter() - t0})
        if protocols is not None:
            files.update(compare.write_protocols(results, root))
    except KeyboardInterrupt:
        where = f"; finished methods are saved in {out}: rerun the same command to resume" if out else ""
        print(f"{PROG}: interrupted{where}", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # every ntkfuse input error is a ValueError subclass
        return _input_error(PROG, e)
    for result in results:
        if protocols is not None:
            print(f"== {compare.protocol_label(result)}")
        print(compare.format_tables(result))
        print()
    reused = [x for r in results for x in r["reused"]]
    print(f"wall time {time.perf_counter() - t0:.1f} s (this process: loading {load_s:.1f} s, runs "
          f"{sum(t['run_s'] for t in times):.1f} s, reports {sum(t['reports_s'] for t in times):.1f} s; "
          f"reused methods: {', '.join(reused) or 'none'})")
    print("wrote " + ", ".join(str(f) for f in files.values()))
    return 0


def _write_timings(out: Path, timings: dict) -> None:
    """out/timings.json: where this process's time went (loading, the run, the reports; `cli_s`
    from the entry point's start, so a process's start-up is its wall time minus cli_s)."""
    import json

    from .files import atomic_write
    atomic_write(Path(out) / "timings.json", json.dumps(timings, indent=1) + "\n")


FIT_SURROGATES_HELP = """Fit surrogate MLPs for chosen layers of a model and report what fitting buys.

    python scripts/fit_surrogates.py                       # MiniLM, sentiment sample, layers 2-5, width 384
    python scripts/fit_surrogates.py --kinds linear,bottleneck-fusion --steps 300 --out runs/fit
    python scripts/fit_surrogates.py --model path/to/llama   # decoders: webnlg sample, NTK of the target log-prob
    python scripts/fit_surrogates.py --help

For every surrogate kind, all chosen layers' blocks are replaced and fitted to the
original blocks' (input, output) token pairs (METHOD.md §4). Written to --out
(atomically; rerunning with the same arguments resumes unfinished fits from their
orbax checkpoints and reuses finished kinds; a directory holding another
configuration is refused unless --fresh):
  model_<kind>/        the fitted model (ntkfuse.compress.save_compressed, orbax)
  results.json/.csv/.md  per layer and kind: held-out block error before/after fitting;
                       per kind: output error (last compressed layer, logits) and NTK
                       errors (vanilla and sign, abs and rel) before/after, of class 0's
                       probability (classifiers) or the summed target log-probability (LMs)
  results_model.csv    the per-kind (whole model) numbers of results.md
  results.png          block error before/after per layer and kind
  plan.json/.md        with --plan-widths: sensitivity rows, greedy and knapsack plans
  run.json, parts/, ckpt/  resume state (configuration hash, finished kinds, orbax fit checkpoints)
See docs/surrogates.md.
"""


def _fit_surrogates_parser() -> argparse.ArgumentParser:
    from .experiments.surrogates import KIND_CHOICES, PLAN_METRICS, SurrogatesConfig
    d = SurrogatesConfig()
    p = argparse.ArgumentParser(prog="fit_surrogates.py", description=FIT_SURROGATES_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model", default=d.model, help="ntkfuse.load name or checkpoint directory")
    a("--data", default=d.data, help="sample:NAME, a .tsv/.csv/.jsonl file, or HF id (default: the model "
      "family's: sample:sentiment for encoders, sample:webnlg for decoders)")
    a("--n-examples", type=int, default=d.n_examples, help="use the first N examples")
    a("--layers", default=d.layers, help="e.g. 2-5 or 1,3 (default: the last two thirds, MiniLM 2-5)")
    a("--width", type=int, default=d.width, help="bottleneck width k (default: D/4, MiniLM 384)")
    a("--rank", type=int, default=d.rank, help="rank of the low-rank linear surrogate (default: d/4, MiniLM 96)")
    a("--kinds", default=d.kinds, help=f"comma-separated, from: {', '.join(KIND_CHOICES)}")
    a("--loss", default=d.loss, choices=("mse", "cosine"))
    a("--steps", type=int, default=d.steps)
    a("--batch-size", type=int, default=d.batch_size, help="tokens per layer per step")
    a("--lr", type=float, default=d.lr)
    a("--weight-decay", type=float, default=d.weight_decay)
    a("--holdout", type=float, default=d.holdout)
    a("--eval-every", type=int, default=d.eval_every)
    a("--patience", type=int, default=d.patience)
    a("--checkpoint-every", type=int, default=d.checkpoint_every)
    a("--max-length", type=int, default=d.max_length)
    a("--max-tokens", type=int, default=d.max_tokens, help="cap on collected tokens")
    a("--n-init", type=int, default=d.n_init, help="k-means restarts for fusion (reference: 30)")
    a("--ntk-examples", type=int, default=d.ntk_examples, help="examples in the NTK (0: skip NTK)")
    a("--plan-widths", default=d.plan_widths,
      help="e.g. 96,192,384,768: also measure singleton sensitivity (one layer replaced by "
           "--plan-method at each width) and allocate widths under --plan-budget")
    a("--plan-method", default=d.plan_method, help="one-shot method for the sensitivity sweep")
    a("--plan-budget", type=float, default=d.plan_budget,
      help="budget as a fraction of the chosen layers' original MLP parameters")
    a("--plan-metric", default=d.plan_metric, choices=PLAN_METRICS)
    a("--seed", type=int, default=d.seed)
    a("--out", default="runs/fit_surrogates")
    a("--fresh", action="store_true", help="recompute everything, overwriting --out")
    a("--no-progress", action="store_true")
    add_compile_cache_flag(p)
    return p


def fit_surrogates_main(argv: Optional[Sequence[str]] = None) -> int:
    args = vars(_fit_surrogates_parser().parse_args(argv))
    use_compile_cache(not args.pop("no_compile_cache"))
    out, fresh, progress = args.pop("out"), args.pop("fresh"), not args.pop("no_progress")
    from .experiments import surrogates
    try:
        surrogates.run(surrogates.SurrogatesConfig(**args), out, progress=progress, fresh=fresh,
                       log=lambda s: print(s, flush=True))
    except KeyboardInterrupt:
        print(f"fit_surrogates.py: interrupted; finished kinds are saved in {out}: rerun the same command to "
              "resume", file=sys.stderr)
        return 130
    except surrogates.SurrogateRunError as e:
        print(f"fit_surrogates.py: error: {e}", file=sys.stderr)
        return 2
    print((Path(out) / "results.md").read_text())
    return 0


FINETUNE_HELP = """Fine-tune the full model and each compressed model on one task and write a table
(method x dev metric, params, best epoch, peak memory, time) as CSV/JSON/markdown plus plots.

With no arguments: the embedded MiniLM on the shipped sentiment sample (20 % held out as
dev), full model and fusion/prune/sketch on layers 2-5 at width 384, 3 epochs (CPU, minutes).
Tasks: glue/<cola|sst2|mrpc|stsb|qqp|mnli|qnli|rte|wnli> and webnlg (HF datasets, needs the hub),
sample:sentiment, sample:webnlg, or classification|regression|generation with --train FILE
[--dev FILE]. An interrupted run resumes: rerun the same command. See docs/finetune.md."""

_FT_LISTS = ("methods", "lrs", "seeds")


def _finetune_parser() -> argparse.ArgumentParser:
    from .experiments.finetune import FinetuneRunConfig
    d = FinetuneRunConfig()
    p = argparse.ArgumentParser(prog="finetune.py", description=FINETUNE_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--recipe", help="a Python file whose get_config() returns a dict of settings; flags override it")
    a("--model", help="'minilm' (default, embedded), a local HF checkpoint directory, or a hub id")
    a("--task", help=f"task (default {d.task})")
    a("--train", help="training data: a .tsv/.csv/.jsonl file, sample:NAME or a HF id 'name[/config][:split]'")
    a("--dev", help="dev data (default: the task's dev split, else --dev-fraction of the training data)")
    a("--dev-fraction", type=float, help=f"held-out fraction when there is no dev split (default {d.dev_fraction})")
    a("--n-train", type=int, help="use the first N training examples")
    a("--n-dev", type=int, help="use the first N dev examples")
    a("--methods", help=f"comma list of compression methods besides the full model (default "
                        f"{','.join(d.methods)}; 'full' alone: only the full model)")
    a("--layers", help="layers to compress: '2-5' or '4,5,6' (default: the last two thirds)")
    a("--width", type=int, help="compressed MLP width k (default: D/4)")
    a("--lrs", help=f"learning-rate grid, comma list (default {','.join(map(str, d.lrs))}; the paper: "
                    "1e-5,2e-5,4e-5,6e-5,8e-5)")
    a("--seeds", help="comma list of seeds (default 0)")
    a("--epochs", type=int, help=f"epochs (default {d.epochs}; the paper: 10)")
    a("--batch-size", type=int, help=f"batch size (default {d.batch_size}; the paper: 32 GLUE, 8 WebNLG)")
    a("--max-length", type=int, help=f"max tokens per example (default {d.max_length})")
    a("--weight-decay", type=float, help=f"AdamW weight decay (default {d.weight_decay})")
    a("--warmup", type=float, help=f"warm-up fraction of the steps (default {d.warmup})")
    a("--clip", type=float, help="gradient-norm clipping (default 1.0 for generation, off otherwise)")
    a("--tune-epochs", type=int, help="layer-wise task tuning epochs of the compressed MLPs first (paper: 1)")
    a("--n-init", type=int, help=f"k-means restarts for fusion/cluster (default {d.n_init}; reference 30)")
    a("--option", action="append", metavar="METHOD.KEY=VALUE", help="a method option, repeatable")
    a("--no-generate", action="store_true", help="generation tasks: dev loss only, no greedy decoding")
    a("--compute-dtype", help="float32 (default) or bfloat16 (forward and backward in bf16 from float32 master "
                              "params; 2.5-3.4x faster than fp32 on an H100)")
    a("--remat", help="rematerialisation of the training step: dots (default: keeps matmul outputs, recomputes "
                      "attention probabilities and elementwise ops; less memory, a few %% more time), none, layer")
    a("--out", help="output directory (default results/finetune/<model>-<task>-<config hash>)")
    a("--fresh", action="store_true", help="recompute everything, overwriting --out")
    a("--no-progress", action="store_true", help="no progress bars")
    add_compile_cache_flag(p)
    return p


def _finetune_config(args):
    from .experiments.finetune import FinetuneRunConfig
    from .finetune import FinetuneError
    import dataclasses as dc
    settings = {}
    if args.recipe:
        p = Path(args.recipe)
        if not p.is_file():
            raise FinetuneError(f"recipe not found: {p}")
        spec = importlib.util.spec_from_file_location(f"_ntkfuse_recipe_{p.stem}", p)
        mod = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(mod)
            settings = dict(mod.get_config())
        except Exception as e:
            raise FinetuneError(f"recipe {p}: cannot be used ({type(e).__name__}: {e})") from None
    known = {f.name for f in dc.fields(FinetuneRunConfig)} | {"out"}
    bad = sorted(set(settings) - known)
    if bad:
        raise FinetuneError(f"recipe {args.recipe}: unknown settings {', '.join(bad)}; "
                            f"known: {', '.join(sorted(known))}")
    for f in known - {"out", "method_options", "generate"}:
        v = getattr(args, f, None)
        if v is not None:
            settings[f] = v
    if args.no_generate:
        settings["generate"] = False
    out = args.out or settings.pop("out", None)
    settings.pop("out", None)
    for f in _FT_LISTS:
        if isinstance(settings.get(f), str):
            settings[f] = tuple(s.strip() for s in settings[f].split(",") if s.strip())
    if "lrs" in settings:
        try:
            settings["lrs"] = tuple(float(x) for x in settings["lrs"])
        except ValueError:
            raise FinetuneError(f"cannot parse the learning rates {settings['lrs']!r}: use e.g. 1e-5,2e-5") from None
    if "seeds" in settings:
        try:
            settings["seeds"] = tuple(int(x) for x in settings["seeds"])
        except ValueError:
            raise FinetuneError(f"cannot parse the seeds {settings['seeds']!r}: use e.g. 0,1,2") from None
    if args.option:
        opts = {k: dict(v) for k, v in dict(settings.get("method_options", {})).items()}
        for spec in args.option:
            method, key, value = _parse_option(spec)
            opts.setdefault(method, {})[key] = value
        settings["method_options"] = opts
    return FinetuneRunConfig(**settings), out


def finetune_main(argv: Optional[Sequence[str]] = None) -> int:
    """`python scripts/finetune.py`: bad input -> one line on stderr, exit status 2."""
    args = _finetune_parser().parse_args(argv)
    use_compile_cache(not args.no_compile_cache)
    from .experiments import finetune as F
    from .experiments.device import describe_device
    t0 = time.perf_counter()
    out = None
    try:
        config, out = _finetune_config(args)
        plan = F.prepare(config)
        out = Path(out) if out else F.default_out_dir(plan)
        dev = describe_device()
        _log(f"finetune: {config.model} on {plan.task.name} ({len(plan.train)} train / {len(plan.dev)} dev), "
            f"methods {', '.join(plan.methods)}, layers {','.join(map(str, plan.layers))} -> {plan.width}, "
            f"device {dev['platform']} ({dev['kind']}); results in {out}")
        result = F.run(plan, out, progress=not args.no_progress, fresh=args.fresh, log=_log)
        files = F.write_reports(result, out)
    except KeyboardInterrupt:
        print(f"finetune.py: interrupted; finished runs (and the running one's last epoch) are saved in {out}: "
              "rerun the same command to resume", file=sys.stderr)
        return 130
    except ValueError as e:   # FinetuneError, DataError, CheckpointError, CompressionError: one line
        print(f"finetune.py: error: {e}", file=sys.stderr)
        return 2
    head, cells = F.table_rows(result)
    from .experiments.reports import text_table
    print(text_table(head, [[str(c) for c in r] for r in cells]))
    print(f"\n{F.describe(result)}\nwall time {time.perf_counter() - t0:.1f} s; wrote "
          + ", ".join(str(f) for f in files.values()))
    return 0


PERPLEXITY_HELP = """Perplexity of a decoder LM (GPT-2, Llama, Mistral, Qwen2; an encoder-decoder such as Switch is
conditioned on each window's context through its encoder) on a local text file, for the
original model and for each compressed model, with the standard sliding window.

    python scripts/perplexity.py --model gpt2 --text wiki.test.raw
    python scripts/perplexity.py --model ./my-llama --text test.txt --max-length 2048 --stride 512 \\
        --methods fusion,prune --layers 8-23 --width 2752

The text is tokenized once; windows of --max-length tokens advance by --stride, each scoring
only the tokens the previous window did not; perplexity = exp(total NLL / scored tokens),
token-weighted. Written to --out (atomically; a rerun reuses finished methods):
results.json, results.csv, results.md. See docs/perplexity.md."""


def _perplexity_parser() -> argparse.ArgumentParser:
    from .experiments.perplexity import PerplexityRunConfig
    d = PerplexityRunConfig()
    p = argparse.ArgumentParser(prog="perplexity.py", description=PERPLEXITY_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model", default=d.model, help=f"a local HF checkpoint directory, or a hub id where the hub is reachable "
                                       f"(default {d.model})")
    a("--text", required=True, help="a local UTF-8 text file (the whole file is one text)")
    a("--max-length", type=int, help="tokens per window (default min(1024, the model's positions))")
    a("--stride", type=int, help="tokens a window advances, 1..max-length (default max-length / 2)")
    a("--batch-size", type=int, default=d.batch_size, help=f"windows per forward (default {d.batch_size})")
    a("--methods", help="comma list of compression methods to evaluate besides the full model (default: none)")
    a("--layers", help="layers to compress: '2-5' or '4,5,6' (default: the last two thirds)")
    a("--width", type=int, help="compressed MLP width k (default: D/4)")
    a("--seed", type=int, default=d.seed, help=f"seed of the random methods (default {d.seed})")
    a("--n-init", type=int, default=d.n_init, help=f"k-means restarts for fusion/cluster (default {d.n_init})")
    a("--option", action="append", metavar="METHOD.KEY=VALUE", help="a method option, repeatable")
    a("--dtype", default=d.dtype, help="params dtype: float32 (default) or bfloat16")
    a("--out", help="output directory (default results/perplexity/<model>-<text>-<config hash>)")
    a("--fresh", action="store_true", help="recompute everything, overwriting --out")
    a("--no-progress", action="store_true", help="no progress bars")
    add_compile_cache_flag(p)
    return p


def perplexity_main(argv: Optional[Sequence[str]] = None) -> int:
    """`python scripts/perplexity.py`: bad input -> one line on stderr, exit status 2."""
    args = _perplexity_parser().parse_args(argv)
    use_compile_cache(not args.no_compile_cache)
    t0 = time.perf_counter()
    out = None
    try:
        from .experiments import perplexity as P
        opts: dict = {}
        for spec in args.option or ():
            method, key, value = _parse_option(spec)
            opts.setdefault(method, {})[key] = value
        config = P.PerplexityRunConfig(
            model=args.model, text=args.text, max_length=args.max_length, stride=args.stride,
            batch_size=args.batch_size, methods=P.parse_list(args.methods) or (), layers=args.layers,
            width=args.width, seed=args.seed, n_init=args.n_init, method_options=opts, dtype=args.dtype)
        _log("loading model and text ...")
        plan = P.prepare(config)
        out = Path(args.out) if args.out else P.default_out_dir(plan)
        _log(f"perplexity: {config.model} on {config.text} ({len(plan.ids)} tokens), windows {plan.max_length} "
            f"stride {plan.stride}; methods {', '.join(plan.methods)}"
            + (f" (layers {','.join(map(str, plan.layers))} -> {plan.width})" if len(plan.methods) > 1 else "")
            + f"; results in {out}")
        result = P.run(plan, out, progress=not args.no_progress, fresh=args.fresh, log=_log)
        files = P.write_reports(result, out)
    except KeyboardInterrupt:
        where = f"; finished methods are saved in {out}: rerun the same command to resume" if out else ""
        print(f"perplexity.py: interrupted{where}", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:   # PerplexityError, DataError, CheckpointError, CompressionError
        return _input_error("perplexity.py", e)
    from .experiments.reports import text_table
    head, cells = P.table_rows(result)
    print(text_table(head, cells))
    print(f"\n{P.describe(result)}\nwall time {time.perf_counter() - t0:.1f} s; wrote "
          + ", ".join(str(f) for f in files.values()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(compare_main())
