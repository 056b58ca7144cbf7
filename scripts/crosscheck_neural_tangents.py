"""Cross-check ntkfuse's empirical NTK against neural-tangents 0.6.5 (issue 11).

neural-tangents does not run on the JAX ntkfuse uses, so this runs in two halves:

  (a) main environment (this command): builds the models, inputs and parameters, saves
      them (npz), computes ntkfuse's kernels (`ntk.empirical_ntk_fn`, and `ntk.kernels`
      for the transformer), then runs (b) through the pinned venv's python;
  (b) `--half nt` in the venv of scripts/setup_neural_tangents_env.sh: loads the same
      parameters and computes `nt.empirical_ntk_fn(f, trace_axes, diagonal_axes,
      vmap_axes, implementation)` for the same functions, for every implementation.

Models: a stax MLP and a stax CNN (jax.example_libraries.stax, the same code in both
environments) under several trace/diagonal settings, and a tiny ntkfuse BERT's
softmax(logits)[0] w.r.t. layer 1's MLP (ntkfuse's own forward, imported in the venv).
Each row compares after the documented convention map (docs/ntk.md, "Moving from
neural-tangents"): neural-tangents' axis numbers count the batch axis, ntkfuse's do not;
neural-tangents divides a traced kernel by the traced axes' size, ntkfuse sums; with
diagonal axes ntkfuse puts them first, neural-tangents keeps them in place.

    python scripts/crosscheck_neural_tangents.py [--nt-python .venv-nt/bin/python] [--out FILE]

Exit status 0 iff every relative Frobenius error is <= --tol (default 1e-5, float32).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NT_PYTHON = ROOT / ".venv-nt" / "bin" / "python"
DEFAULT_OUT = ROOT / "results" / "crosscheck_neural_tangents.json"
NT_IMPLEMENTATIONS = {1: "jacobian contraction", 2: "ntk-vector products", 3: "structured derivatives"}

# (name, model, neural-tangents kwargs). Axis numbers are neural-tangents' (batch axis = 0).
SETTINGS = [
    ("mlp full", "mlp", {"trace_axes": (), "vmap_axes": 0}),
    ("mlp full, vmap_axes=None", "mlp", {"trace_axes": (), "vmap_axes": None}),
    ("mlp trace (-1,)", "mlp", {"trace_axes": (-1,), "vmap_axes": 0}),
    ("mlp diag (-1,)", "mlp", {"trace_axes": (), "diagonal_axes": (-1,), "vmap_axes": 0}),
    ("cnn trace (-1,)", "cnn", {"trace_axes": (-1,), "vmap_axes": 0}),
    ("cnn trace (3,) diag (1,2)", "cnn", {"trace_axes": (3,), "diagonal_axes": (1, 2), "vmap_axes": 0}),
    ("cnn trace (-1,) diag (2,)", "cnn", {"trace_axes": (-1,), "diagonal_axes": (2,), "vmap_axes": 0}),
    ("bert class_prob(0), layer 1 MLP", "bert", {"trace_axes": (), "vmap_axes": 0}),
]
BERT = {"family": "bert", "vocab_size": 40, "hidden": 16, "intermediate": 24, "num_layers": 2, "num_heads": 2,
        "max_positions": 16, "num_labels": 2}
BERT_LAYER = 1


# ---------------------------------------------------------------- models (both environments)

def stax_model(name):
    """(init_fn, apply_fn, input shape): the same jax.example_libraries.stax code in both envs."""
    from jax.example_libraries import stax
    if name == "mlp":
        init, apply = stax.serial(stax.Dense(16), stax.Relu, stax.Dense(12), stax.Tanh, stax.Dense(3))
        return init, apply, (6, 5)
    if name == "cnn":   # outputs (N, H, W, C): several untraced/diagonal axes to lay out
        init, apply = stax.serial(stax.Conv(4, (3, 3), padding="SAME"), stax.Relu,
                                  stax.Conv(2, (3, 3), padding="SAME"))
        return init, apply, (3, 4, 4, 1)
    raise ValueError(name)


def bert_function(ntk, cfg, params):
    """f(selected MLP params, batch) -> (N,) softmax(logits)[0] per example, and the selected params."""
    sel = ntk.mlp_layers([BERT_LAYER])
    s, rest = sel.split(params)
    out = ntk.class_prob(0)

    def f(s, batch):
        import jax
        return jax.vmap(lambda ex: out(cfg, ntk.Selector.merge(s, rest), ex))(batch)

    return f, s, sel, out


def bert_batch():
    rng = np.random.default_rng(1)
    batch = {"input_ids": rng.integers(3, 40, (4, 6)).astype(np.int32), "attention_mask": np.ones((4, 6), np.int32)}
    batch["attention_mask"][0, 4:] = 0   # one padded example
    return batch


def save_tree(store, prefix, tree):
    import jax
    for i, leaf in enumerate(jax.tree_util.tree_leaves(tree)):
        store[f"{prefix}/{i}"] = np.asarray(leaf)


def load_tree(data, prefix, like):
    """`like`'s structure (rebuilt locally: treedefs do not cross JAX versions) with the saved leaves."""
    import jax
    leaves, treedef = jax.tree_util.tree_flatten(like)
    new = [data[f"{prefix}/{i}"] for i in range(len(leaves))]
    for i, (a, b) in enumerate(zip(leaves, new)):
        if np.shape(a) != b.shape:
            raise SystemExit(f"{prefix} leaf {i}: saved shape {b.shape} != rebuilt {np.shape(a)}")
    return jax.tree_util.tree_unflatten(treedef, [jax.numpy.asarray(b) for b in new])


# ---------------------------------------------------------------- convention map

def to_ntkfuse(kw):
    """neural-tangents axes (counting the batch axis) -> ntkfuse's (per-example output axes)."""
    shift = lambda axes: tuple(a - 1 if a >= 0 else a for a in axes)
    return {"trace_axes": shift(kw.get("trace_axes", (-1,))), "diagonal_axes": shift(kw.get("diagonal_axes", ())),
            "vmap_axes": 0 if kw.get("vmap_axes") == 0 else None}


def layout(kw, out_shape):
    """(permutation taking ntkfuse's kernel to neural-tangents' axis order, traced size).
    out_shape: per-example output shape."""
    nd = len(out_shape)
    trace = [a % nd for a in to_ntkfuse(kw)["trace_axes"]]
    diag = [a % nd for a in to_ntkfuse(kw)["diagonal_axes"]]
    rest = [i for i in range(nd) if i not in trace and i not in diag]
    ours = ["n1", "n2"] + [f"d{i}" for i in diag] + [x for i in rest for x in (f"a{i}", f"b{i}")]
    theirs = ["n1", "n2"] + [x for i in range(nd) if i not in trace
                             for x in ([f"d{i}"] if i in diag else [f"a{i}", f"b{i}"])]
    return [ours.index(x) for x in theirs], math.prod(out_shape[i] for i in trace)


# ---------------------------------------------------------------- half (b): neural-tangents

def import_neural_tangents():
    """neural_tangents/__init__ eagerly imports `experimental` (TF interop: tensorflow, tf2jax,
    jax2tf), which nothing here uses; an empty stand-in for that one submodule, in this
    process only, lets the rest import without TensorFlow."""
    sys.modules.setdefault("neural_tangents.experimental", types.ModuleType("neural_tangents.experimental"))
    import neural_tangents
    return neural_tangents


def import_ntkfuse_old_jax():
    """ntkfuse in the pinned venv. Returns (modules, note). jax < 0.4.27 lacks
    jax.tree_util.register_dataclass, which ntkfuse's block dataclasses use; the backport
    registers the same flatten (data fields as children, fixed fields as static aux data)."""
    import jax
    note = "imports unchanged"
    if not hasattr(jax.tree_util, "register_dataclass"):
        def register_dataclass(cls, data_fields, meta_fields):
            def flatten(o):
                return [getattr(o, n) for n in data_fields], tuple(getattr(o, n) for n in meta_fields)

            def unflatten(meta, kids):
                return cls(**dict(zip(data_fields, kids)), **dict(zip(meta_fields, meta)))
            jax.tree_util.register_pytree_node(cls, flatten, unflatten)
            return cls
        jax.tree_util.register_dataclass = register_dataclass
        note = (f"jax {jax.__version__} lacks jax.tree_util.register_dataclass; ran with an in-process backport "
                "(pytree registration only; the forward is ntkfuse's own code)")
    sys.path.insert(0, str(ROOT))
    import ntkfuse
    from ntkfuse import ntk
    from ntkfuse.models import ModelConfig
    return (ntkfuse, ntk, ModelConfig), note


def nt_half(workdir: Path, implementations):
    import jax
    import jaxlib
    nt = import_neural_tangents()
    data = np.load(workdir / "inputs.npz")
    results, status = {}, {}
    fns = {}
    for model in ("mlp", "cnn"):
        init, apply, shape = stax_model(model)
        _, like = init(jax.random.PRNGKey(0), shape)
        fns[model] = (apply, load_tree(data, f"{model}/params", like), data[f"{model}/x"])
    try:
        (ntkfuse, ntk, ModelConfig), note = import_ntkfuse_old_jax()
        cfg = ModelConfig(**BERT)
        like = ntkfuse.init_params(cfg, jax.random.PRNGKey(0))
        params = load_tree(data, "bert/params", like)
        f, s, _, _ = bert_function(ntk, cfg, params)
        fns["bert"] = (f, s, {k[len("bert/x/"):]: data[k] for k in data.files if k.startswith("bert/x/")})
        status["ntkfuse_in_nt_env"] = note
    except Exception as e:   # noqa: BLE001  reported, not fatal: the stax rows still stand
        status["ntkfuse_in_nt_env"] = f"does not import: {type(e).__name__}: {e}"
    for name, model, kw in SETTINGS:
        if model not in fns:
            continue
        f, p, x = fns[model]
        for impl in implementations:
            key = f"{name}|{impl}"
            try:
                k = jax.jit(nt.empirical_ntk_fn(f, implementation=impl, **kw))(x, None, p)
                results[key] = np.asarray(k)
            except Exception as e:   # noqa: BLE001  recorded per row (e.g. an implementation this JAX lacks)
                status[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    np.savez(workdir / "nt.npz", **results)
    status["versions"] = {"neural_tangents": nt.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
                          "numpy": np.__version__, "python": platform.python_version()}
    (workdir / "nt.json").write_text(json.dumps(status, indent=1))


# ---------------------------------------------------------------- half (a): ntkfuse, compare

def main_half(args):
    import jax
    import jaxlib

    import ntkfuse
    from ntkfuse import ntk
    from ntkfuse.files import atomic_write
    from ntkfuse.models import ModelConfig

    nt_python = Path(args.nt_python)
    if not nt_python.exists():
        raise SystemExit(f"no neural-tangents environment at {nt_python}: run scripts/setup_neural_tangents_env.sh "
                         "(or pass --nt-python / set NTKFUSE_NT_PYTHON)")
    tmp = tempfile.TemporaryDirectory(prefix="ntcheck-") if args.workdir is None else None
    workdir = Path(args.workdir or tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    store, fns = {}, {}
    for i, model in enumerate(("mlp", "cnn")):
        init, apply, shape = stax_model(model)
        _, p = init(jax.random.PRNGKey(10 + i), shape)
        x = np.asarray(jax.random.normal(jax.random.PRNGKey(20 + i), shape), np.float32)
        save_tree(store, f"{model}/params", p)
        store[f"{model}/x"] = x
        fns[model] = (apply, p, x)
    cfg = ModelConfig(**BERT)
    params = ntkfuse.init_params(cfg, jax.random.PRNGKey(0))
    f, s, sel, out = bert_function(ntk, cfg, params)
    batch = bert_batch()
    save_tree(store, "bert/params", params)
    store.update({f"bert/x/{k}": v for k, v in batch.items()})
    fns["bert"] = (f, s, batch)
    np.savez(workdir / "inputs.npz", **store)

    ours = {}
    for name, model, kw in SETTINGS:
        fn, p, x = fns[model]
        ours[name] = np.asarray(ntk.empirical_ntk_fn(fn, **to_ntkfuse(kw))(x, None, p))
    engine = np.asarray(ntk.kernels(cfg, params, batch, selector=sel, kinds=("ntk",), output=out)["ntk"])

    t_main = time.perf_counter() - t0
    t0 = time.perf_counter()
    proc = subprocess.run([str(nt_python), str(Path(__file__).resolve()), "--half", "nt", "--workdir", str(workdir),
                           "--implementations", ",".join(map(str, args.implementations))],
                          capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": ""})
    t_nt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"neural-tangents half failed ({nt_python}):\n{proc.stderr[-3000:]}")
    theirs = dict(np.load(workdir / "nt.npz"))
    status = json.loads((workdir / "nt.json").read_text())

    rows = []
    for name, model, kw in SETTINGS:
        fn, p, x = fns[model]
        out_shape = jax.eval_shape(fn, p, x).shape[1:]
        perm, traced = layout(kw, out_shape)
        candidates = [("empirical_ntk_fn", ours[name])] + ([("kernels", engine)] if model == "bert" else [])
        for impl in args.implementations:
            key = f"{name}|{impl}"
            for ours_name, k in candidates:
                row = {"setting": name, "nt_kwargs": {**kw, "implementation": impl}, "ntkfuse": ours_name,
                       "ntkfuse_kwargs": (to_ntkfuse(kw) if ours_name == "empirical_ntk_fn"
                                          else "kernels(kinds=('ntk',))"),
                       "same_layout": perm == list(range(len(perm))), "traced_size": traced}
                if key not in theirs:
                    row.update(rel_err=None, ok=None, note=status.get(key, "not computed"))
                else:
                    want = theirs[key] * traced            # neural-tangents averages over traced axes
                    got = np.transpose(k, perm)
                    if got.shape != want.shape:
                        row.update(rel_err=None, ok=False, note=f"shape {got.shape} vs {want.shape}")
                    else:
                        err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
                        row.update(rel_err=err, ok=err <= args.tol, shape=list(want.shape))
                    if k.shape == theirs[key].shape:   # what forgetting the convention map would cost
                        row["unmapped_rel_err"] = float(np.linalg.norm(k - theirs[key]) / np.linalg.norm(theirs[key]))
                rows.append(row)

    print(f"{'setting':34} {'NT impl':24} {'ntkfuse':17} {'layout':7} {'÷':>3} {'rel. Frobenius err':>18}")
    for r in rows:
        if r["rel_err"] is None:
            err = "n/a: " + r["note"][:60]
        else:
            err = f"{r['rel_err']:.2e}" + ("" if r["ok"] else "  FAIL")
        print(f"{r['setting']:34} {NT_IMPLEMENTATIONS[r['nt_kwargs']['implementation']]:24} {r['ntkfuse']:17} "
              f"{'same' if r['same_layout'] else 'moved':7} {r['traced_size']:>3} {err:>18}")
    compared = [r for r in rows if r["rel_err"] is not None]
    ok = bool(compared) and not any(r["ok"] is False for r in rows)   # rows not computed are listed, not failed
    result = {"ok": ok, "tol": args.tol, "max_rel_err": max((r["rel_err"] for r in compared), default=None),
              "n_compared": len(compared), "n_not_computed": len(rows) - len(compared),
              "ntkfuse_in_nt_env": status.get("ntkfuse_in_nt_env"),
              "seconds": {"main_half": round(t_main, 1), "nt_half": round(t_nt, 1)}, "rows": rows,
              "versions": {"main": {"ntkfuse": ntkfuse.__version__, "jax": jax.__version__,
                                    "jaxlib": jaxlib.__version__, "numpy": np.__version__,
                                    "python": platform.python_version()},
                           "nt_env": status["versions"]}}
    atomic_write(args.out, json.dumps(result, indent=1) + "\n")
    print(f"ntkfuse in the neural-tangents env: {result['ntkfuse_in_nt_env']}")
    print(f"versions: main {result['versions']['main']}; nt env {result['versions']['nt_env']}")
    print(f"{'OK' if ok else 'FAILED'}: {len(compared)} comparisons, max rel. err {result['max_rel_err']:.2e} "
          f"(tol {args.tol:g}); {len(rows) - len(compared)} not computed -> {args.out}")
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    env = os.environ.get("NTKFUSE_NT_PYTHON")   # relative: under the repo root, like the test
    ap.add_argument("--nt-python", default=str(ROOT / env if env else DEFAULT_NT_PYTHON),
                    help="python of the neural-tangents venv (default $NTKFUSE_NT_PYTHON or .venv-nt/bin/python)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON result file")
    ap.add_argument("--tol", type=float, default=1e-5, help="max relative Frobenius error")
    ap.add_argument("--workdir", default=None, help="where the two halves exchange npz files (default: a temp dir)")
    ap.add_argument("--implementations", default="1,2,3",
                    help="neural-tangents implementations to run: 1 jacobian contraction, 2 ntk-vector products, "
                         "3 structured derivatives")
    ap.add_argument("--half", choices=("main", "nt"), default="main", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    raw = args.implementations
    try:
        args.implementations = [int(i) for i in raw.split(",")]
    except ValueError:
        args.implementations = []
    if not args.implementations or not set(args.implementations) <= set(NT_IMPLEMENTATIONS):
        ap.error(f"--implementations: comma-separated subset of {sorted(NT_IMPLEMENTATIONS)}, got {raw!r}")
    if args.half == "nt":
        if args.workdir is None:
            raise SystemExit("--half nt needs --workdir")
        nt_half(Path(args.workdir), args.implementations)
        return 0
    return main_half(args)


if __name__ == "__main__":
    sys.exit(main())
