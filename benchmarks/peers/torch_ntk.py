"""Peer: the empirical NTK of chosen MLP parameters with PyTorch + Hugging Face.

A randomly initialised RoBERTa sequence classifier; the scalar output of example i is its
softmax probability of class 0; G holds one row of gradients per example with respect to
the MLP weights and biases of --layers (HF parameter order), and

    K_ntk  = G G^T          K_sign = G sign(G)^T   (the Adam / sign-GD kernel)

G is computed two ways, each timed (--modes):
  loop  one forward/backward per example, as the MLP Fusion reference code does
  vmap  torch.func.vmap(grad(f)) over chunks of --chunk examples

Written into --out: checkpoint/ (save_pretrained, so ntkfuse loads the same weights),
inputs.npz (input_ids, attention_mask), kernels.npz (K_ntk, K_sign of the first mode, as
float64) and result.json (timings, sizes, agreement between modes).

    python benchmarks/peers/torch_ntk.py --n 128 --seq 128 --layers 4-11 --out /tmp/peer_ntk
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch_common import layer_list, synchronize  # sibling module (scripts: their dir is on sys.path)


def build_model(args):
    from transformers import RobertaConfig, RobertaForSequenceClassification
    torch.manual_seed(args.seed)
    cfg = RobertaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate,
                        num_hidden_layers=args.num_layers, num_attention_heads=args.heads, num_labels=2,
                        vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                        pad_token_id=1, bos_token_id=0, eos_token_id=2)
    return cfg, RobertaForSequenceClassification(cfg).eval()


def random_inputs(cfg, n: int, seq: int, seed: int):
    """Token ids in [3, vocab) framed by <s> ... </s>; every mask entry is 1."""
    ids = np.random.default_rng(seed).integers(3, cfg.vocab_size, size=(n, seq)).astype(np.int64)
    ids[:, 0], ids[:, -1] = cfg.bos_token_id, cfg.eos_token_id
    return ids, np.ones_like(ids)


def mlp_parameter_names(layers) -> list[str]:
    return [f"roberta.encoder.layer.{l}.{sub}.{p}"
            for l in layers for sub in ("intermediate.dense", "output.dense") for p in ("weight", "bias")]


def prob0(logits):
    return torch.softmax(logits, dim=-1)[..., 0]


def grads_loop(model, chosen, ids, mask):
    rows = []
    for i in range(ids.shape[0]):
        model.zero_grad(set_to_none=True)
        prob0(model(input_ids=ids[i:i + 1], attention_mask=mask[i:i + 1]).logits)[0].backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in chosen.values()]))
    return torch.stack(rows)


def grads_vmap(model, chosen, ids, chunk):
    from torch.func import functional_call, grad, vmap
    detached = {k: v.detach() for k, v in chosen.items()}

    # All masks are ones; no mask is passed because transformers' mask helpers branch on
    # tensor values, which vmap does not allow.
    def f(params, x):
        return prob0(functional_call(model, params, (x[None],)).logits)[0]

    per_example = vmap(grad(f), in_dims=(None, 0))
    blocks = []
    for s in range(0, ids.shape[0], chunk):
        g = per_example(detached, ids[s:s + chunk])
        blocks.append(torch.cat([g[k].reshape(g[k].shape[0], -1) for k in chosen], dim=1))
    return torch.cat(blocks)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=128, help="examples")
    ap.add_argument("--seq", type=int, default=128, help="tokens per example")
    ap.add_argument("--layers", default="4-11", help="layers whose MLP parameters are differentiated")
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--intermediate", type=int, default=3072)
    ap.add_argument("--num-layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--chunk", type=int, default=8, help="examples per vmap chunk")
    ap.add_argument("--modes", default="loop,vmap", help="comma list of loop, vmap")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (default: full fp32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - {"loop", "vmap"}:
        raise SystemExit(f"--modes {args.modes!r}: choose from loop, vmap")

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg, model = build_model(args)
    model.save_pretrained(out / "checkpoint", safe_serialization=True)
    model.to(device)
    ids, mask = random_inputs(cfg, args.n, args.seq, args.seed)
    np.savez(out / "inputs.npz", input_ids=ids, attention_mask=mask)
    ids_t, mask_t = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)

    layers = layer_list(args.layers)
    named = dict(model.named_parameters())
    chosen = {k: named[k] for k in mlp_parameter_names(layers)}
    chosen_ids = {id(p) for p in chosen.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen_ids)
    result = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "torch": torch.__version__,
              "n": args.n, "seq": args.seq, "layers": layers,
              "n_params": sum(p.numel() for p in chosen.values()), "tf32": args.tf32}

    kernels = {}
    for mode in modes:
        synchronize()
        t0 = time.perf_counter()
        G = grads_loop(model, chosen, ids_t, mask_t) if mode == "loop" else grads_vmap(model, chosen, ids_t, args.chunk)
        synchronize()
        t1 = time.perf_counter()
        K, K_sign = G @ G.T, G @ torch.sign(G).T
        synchronize()
        t2 = time.perf_counter()
        result[mode] = {"grads_s": t1 - t0, "gram_s": t2 - t1, "total_s": t2 - t0}
        if device == "cuda":
            result[mode]["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        kernels[mode] = (K.double().cpu().numpy(), K_sign.double().cpu().numpy())
        del G

    K0, Ks0 = kernels[modes[0]]
    np.savez(out / "kernels.npz", K_ntk=K0, K_sign=Ks0)
    for mode in modes[1:]:
        result[mode]["rel_diff_vs_" + modes[0]] = float(np.linalg.norm(kernels[mode][0] - K0) / np.linalg.norm(K0))
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
