"""Peer: fine-tuning step time and peak memory with PyTorch + Hugging Face.

What a user would write without ntkfuse for the MLP Fusion paper's efficiency table: a
roberta-base sequence classifier (or a gpt2 LM) trained with AdamW (betas 0.9/0.98,
eps 1e-6, weight decay 0.1, linear decay after a 6% warm-up, global-norm clipping 1.0),
once at full width and once with the MLPs of --layers narrowed to --width (the shape every
one-shot compression method produces). Random weights and token ids: only speed and
memory are measured.

    python benchmarks/peers/torch_finetune.py --model roberta --batch 32 --seq 128 --dtype bf16 --out /tmp/peer_ft

result.json in --out has one row per model (full, compressed): median step time over
--steps timed steps after --warmup, tokens/s, peak memory (CUDA) and trainable parameters.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch_common import layer_list, synchronize  # sibling module (scripts: their dir is on sys.path)


def build(model_name: str, layers, width, seed: int):
    """Randomly initialised HF model; with `width`, the MLPs of `layers` narrowed to it."""
    from transformers import GPT2Config, GPT2LMHeadModel, RobertaConfig, RobertaForSequenceClassification
    from transformers.pytorch_utils import Conv1D
    torch.manual_seed(seed)
    if model_name == "roberta":
        cfg = RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                            num_labels=2)
        model = RobertaForSequenceClassification(cfg)
        for l in layers if width else ():
            block = model.roberta.encoder.layer[l]
            block.intermediate.dense = torch.nn.Linear(cfg.hidden_size, width)
            block.output.dense = torch.nn.Linear(width, cfg.hidden_size)
    else:
        cfg = GPT2Config()
        model = GPT2LMHeadModel(cfg)
        for l in layers if width else ():
            mlp = model.transformer.h[l].mlp
            mlp.c_fc, mlp.c_proj = Conv1D(width, cfg.n_embd), Conv1D(cfg.n_embd, width)
    return model, cfg


def warmup_linear(total: int):
    warm = max(1, int(0.06 * total))
    return lambda s: min(1.0, (s + 1) / warm) * max(0.0, (total - s) / total)


def run_row(args, width):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, cfg = build(args.model, layer_list(args.layers), width, args.seed)
    model = model.to(device).train()          # train mode: dropout on, as in fine-tuning
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    total = args.warmup + args.steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_linear(total))
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(3, cfg.vocab_size, (args.batch, args.seq), generator=gen)
    labels = torch.randint(0, 2, (args.batch,), generator=gen) if args.model == "roberta" else ids
    ids, labels = ids.to(device), labels.to(device)
    mask = torch.ones_like(ids)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(total):
        synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    row = {"width": width or "full", "trainable_params": trainable, "median_step_s": median,
           "tokens_per_s": args.batch * args.seq / median, "times_s": times, "final_loss": float(loss)}
    if device == "cuda":
        row["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("roberta", "gpt2"), default="roberta")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--layers", default="4-11", help="layers whose MLP is narrowed in the compressed row")
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                    help="fp32: no TF32; bf16: torch.autocast bfloat16 (what a user turns on)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.width <= 0 or args.steps <= 0 or args.batch <= 0 or args.seq <= 0:
        raise SystemExit("--width, --steps, --batch and --seq must be positive")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, **{k: v for k, v in vars(args).items() if k != "out"},
              "rows": [run_row(args, None), run_row(args, args.width)]}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    for row in result["rows"]:
        print({k: v for k, v in row.items() if k != "times_s"})


if __name__ == "__main__":
    main()
