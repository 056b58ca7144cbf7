"""How well the NTK planner's memory model matches what XLA allocates: plan `kernels` at roberta-base
shape (random weights, MLPs of layers 4-11, both kernels) for N examples, then compile (without
running) each program the plan calls and read XLA's memory analysis (arguments, outputs, temporaries).

    python benchmarks/diag_plan_memory.py --n 4096 --out /tmp/plan_mem.json     # GPU
    python benchmarks/diag_plan_memory.py --small --n 64 --out /tmp/plan_mem.json

For the `layers` strategy the planner budgets: the factors (u1, δ2 of every selected layer) resident,
a quarter of the rest for the chunked forward/backward, half for one D-chunk's gradient columns.
The JSON sets each program's XLA bytes beside the share the planner gave it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import harness  # noqa: E402


def mem(compiled) -> dict:
    m = compiled.memory_analysis()
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
            "generated_code_size_in_bytes")
    return {k: int(getattr(m, k, 0) or 0) for k in keys} if m is not None else {}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_small(ap, "tiny model on CPU")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--budget-gb", type=float, default=None, help="memory budget (default: the engine's)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import jax
    import ntkfuse
    from ntkfuse import ntk
    from ntkfuse.ntk import kernels_module as km

    small = args.small
    cfg = harness.roberta_cfg(small)
    params = jax.eval_shape(lambda k: ntkfuse.init_params(cfg, k), jax.random.PRNGKey(0))
    params = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), params)
    ids = np.full((args.n, args.seq), 5, np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    layers = harness.parse_layers("2-3" if small else "4-11")
    output, kinds = ntk.class_prob(0), ("ntk", "sign")
    sel = ntk.mlp_layers(layers)
    budget = int(args.budget_gb * 2**30) if args.budget_gb else None
    b1 = km._prepare(cfg, batch, output)
    plan = km.plan_kernels(cfg, params, b1, selector=sel, kinds=kinds, memory_budget_bytes=budget)
    itemsize = 4
    res = {"device": harness.device(), "n": args.n, "seq": args.seq,
           "plan": {"strategy": plan.strategy, "chunk": plan.chunk, "d_chunks": list(plan.d_chunks),
                    "budget_bytes": plan.budget, "act_bytes_per_example": plan.act_bytes_per_example, "g_bytes": plan.g_bytes}}
    if plan.strategy == "layers":
        spec = km._tokens_spec(params, [p for b in plan.blocks for p in b])
        lays = tuple(l for l, _ in spec)
        factor_bytes = args.n * args.seq * 2 * cfg.hidden * itemsize * len(spec)
        free = plan.budget - factor_bytes
        low = km._layer_inputs.lower(params, b1, cfg=cfg, output=output, layers=lays, chunk=plan.chunk, dtype=None)
        c1, fshape = low.compile(), low.out_info
        l0, names = spec[0]
        c2 = km._layer_gram.lower(params["layers"][l0]["mlp"], fshape[l0], None, names=names, kinds=kinds,
                                  activation=cfg.activation, d_chunks=plan.d_chunks[0], gram="highest",
                                  impl="split").compile()
        res["planner"] = {"factor_bytes": factor_bytes, "forward_share": free // 4,
                          "forward_estimate": plan.chunk * plan.act_bytes_per_example, "d_chunk_share": free // 2}
        res["xla"] = {"layer_inputs": mem(c1), "layer_gram": mem(c2)}
        li, lg = res["xla"]["layer_inputs"], res["xla"]["layer_gram"]
        res["peak_estimates"] = {
            "during_layer_inputs": li.get("argument_size_in_bytes", 0) + li.get("output_size_in_bytes", 0)
            + li.get("temp_size_in_bytes", 0),
            "during_layer_gram": factor_bytes + lg.get("temp_size_in_bytes", 0) + lg.get("output_size_in_bytes", 0)
            + sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))}
    else:
        s, r = sel.split(params)
        c = km._kernels_explicit.lower(s, r, b1, None, cfg=cfg, output=output, kinds=kinds, chunk=plan.chunk,
                                       dtype=None, gram="highest", impl="split").compile()
        res["xla"] = {"kernels_explicit": mem(c)}
    for k, v in res.get("peak_estimates", {}).items():
        print(f"{k}: {v / 2**30:.2f} GiB (budget {plan.budget / 2**30:.2f} GiB)")
    print(res["xla"])
    harness.write_json(args.out, res)


if __name__ == "__main__":
    main()
