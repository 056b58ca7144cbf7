"""Fine-tuning: pure loss functions over the params tree, jitted train and eval steps,
and the epoch loop with per-epoch dev evaluation and orbax checkpoints.

Every array of the params tree trains, whatever the MLP block kinds, except the leaves
`ntkfuse.frozen.frozen_mask` names (fields a block declares fixed, e.g. FusedMLP.counts, and
MoE routers unless `train_router`): the step differentiates the trainable partition only and
AdamW holds no state for the frozen leaves, so neither gradients nor AdamW (nor its weight
decay) ever touch them.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import sharding
from ..data import DataError, Example, check_labels
from ..frozen import cast_floating, merge_frozen, split_frozen, trainable_grad
from ..models import ModelConfig, check_batch, forward
from ..validate import check_choice, check_positive
from . import optim
from .batches import batches, bucket_lengths, encode, num_batches
from .tasks import FinetuneError, Task, check_head

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The paper's recipe (METHOD.md §5) as defaults; `clip` is 1.0 for GPT-2 in the paper.
    `tune_epochs` > 0 first runs layer-wise task tuning of the compressed MLPs
    (`ntkfuse.surrogate.tuning`, the paper's 1 epoch) when a teacher is given."""
    lr: float = 2e-5
    epochs: int = 10
    batch_size: int = 32
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-6
    warmup: float = 0.06            # fraction of the total steps
    clip: Optional[float] = None    # global gradient-norm clipping
    seed: int = 0                   # data order and dropout
    max_length: int = 128
    eval_batch_size: int = 64
    tune_epochs: int = 0
    tune_lr: float = 1e-4
    generate: bool = True           # generation tasks: greedy-decode the dev set each epoch
    max_new_tokens: int = 40
    # "bfloat16": float32 master params cast to bf16 inside the step (forward and backward in
    # bf16 as torch.autocast; LayerNorm statistics, softmax, loss and AdamW stay float32)
    compute_dtype: str = "float32"
    # PRNG of the dropout masks: "rbg" (XLA's RngBitGenerator, fast on accelerators; threefry
    # costs milliseconds per step for ~10⁸ mask bits) or "threefry2x32" (JAX's default)
    prng_impl: str = "rbg"
    # Rematerialisation in the training step (ModelConfig.remat): "dots" keeps the layers' matmul
    # outputs and recomputes attention probabilities and elementwise ops in the backward pass:
    # roberta-base batch 32×128 fp32 on an H100, 3.0 instead of 5.0 GiB for 4% more step time
    # (benchmarks/bench_finetune.py); "none" stores every activation; "layer" only layer inputs.
    remat: str = "dots"
    # MoE routers get no update unless asked (issue 13: expert compression keeps the routing).
    train_router: bool = False

    def __post_init__(self):
        check(self)

    def replace(self, **kw) -> "TrainConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check(tc: TrainConfig) -> TrainConfig:
    e = FinetuneError
    check_positive("learning rate (lr)", tc.lr, error=e)
    check_positive("tune_lr", tc.tune_lr, error=e)
    for name in ("epochs", "batch_size", "max_length", "eval_batch_size", "max_new_tokens"):
        check_positive(name, getattr(tc, name), error=e, integer=True)
    check_positive("tune_epochs", tc.tune_epochs, error=e, integer=True, allow_zero=True)
    check_positive("weight_decay", tc.weight_decay, error=e, allow_zero=True)
    if not (0 <= tc.b1 < 1 and 0 <= tc.b2 < 1):
        raise FinetuneError(f"AdamW betas must lie in [0, 1), got ({tc.b1}, {tc.b2})")
    check_positive("eps", tc.eps, error=e)
    if not 0 <= tc.warmup < 1:
        raise FinetuneError(f"warmup is a fraction of the steps in [0, 1), got {tc.warmup}")
    if tc.clip is not None:
        check_positive("clip", tc.clip, error=e)
    if tc.max_length < 2:
        raise FinetuneError(f"max_length must be >= 2, got {tc.max_length}")
    check_choice("compute_dtype", tc.compute_dtype, COMPUTE_DTYPES, error=e)
    check_choice("prng_impl", tc.prng_impl, PRNG_IMPLS, error=e)
    check_choice("remat", tc.remat, REMATS, error=e)
    return tc


COMPUTE_DTYPES = ("float32", "bfloat16")
PRNG_IMPLS = ("rbg", "unsafe_rbg", "threefry2x32")
REMATS = {"none": False, "dots": "dots", "layer": True}   # TrainConfig.remat -> ModelConfig.remat


def _compute(params, compute_dtype: str):
    """Floating leaves cast to the compute dtype (inside the grad: gradients reach the float32
    masters); fixed fields stay float32 (`ntkfuse.frozen.cast_floating`)."""
    if compute_dtype == "float32":
        return params
    return cast_floating(params, jnp.dtype(compute_dtype))


def dropout_key(tc: "TrainConfig"):
    """The root key of the dropout masks (typed, of `tc.prng_impl`)."""
    return jax.random.key(tc.seed, impl=tc.prng_impl)


# --------------------------------------------------------------------------- losses


def _inputs(batch: dict) -> dict:
    return {k: batch[k] for k in INPUTS if k in batch}


def token_nll(logits, input_ids, target_mask):
    """(B,) sums and counts of −log p over target tokens: token t is predicted from
    position t−1 (TargetLogprob's shift convention; target_mask[:, 0] is ignored)."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, input_ids[:, 1:, None], axis=-1)[..., 0]
    m = target_mask[:, 1:].astype(jnp.float32)
    return jnp.sum(nll * m, 1), jnp.sum(m, 1)


def loss(cfg: ModelConfig, kind: str, params, batch: dict, rng=None):
    """Mean loss of the real rows (weight 1): cross-entropy (classification), squared error
    (regression, one output as HF's MSELoss), or cross-entropy per target token averaged
    over the batch's target tokens (generation, as HF's labels with -100 elsewhere)."""
    logits = forward(cfg, params, _inputs(batch), rng=rng).logits.astype(jnp.float32)
    w = batch["weight"].astype(jnp.float32)
    if kind == "generation":
        s, n = token_nll(logits, batch["input_ids"], batch["target_mask"])
        return jnp.sum(s * w) / jnp.maximum(jnp.sum(n * w), 1.0)
    if kind == "regression":
        per = jnp.square(logits[:, 0] - batch["labels"].astype(jnp.float32))
    else:
        per = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), batch["labels"][:, None], -1)[:, 0]
    return jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1.0)


def eval_outputs(cfg: ModelConfig, kind: str, params, batch: dict) -> dict:
    """Per-row outputs of a dev batch: class logits, regression scores, or (generation)
    summed target-token NLL and token counts."""
    logits = forward(cfg, params, _inputs(batch)).logits.astype(jnp.float32)
    if kind == "generation":
        s, n = token_nll(logits, batch["input_ids"], batch["target_mask"])
        return {"nll": s, "tokens": n}
    if kind == "regression":
        return {"pred": logits[:, 0]}
    return {"logits": logits}


@functools.lru_cache(maxsize=16)
def steps(cfg: ModelConfig, kind: str, tc: TrainConfig, total_steps: int):
    """(optimizer, jitted train step, jitted eval step) for one model config, task kind and
    schedule. train_step(params, opt_state, batch, rng) -> (params, opt_state, metrics)
    donates params and opt_state; eval_step(params, batch) -> per-row outputs. The step
    differentiates the trainable leaves only (`ntkfuse.frozen`: fixed fields and, unless
    tc.train_router, MoE routers pass through unchanged); `grad_norm` is theirs."""
    tx = optim.optimizer(tc, total_steps)
    train_cfg = cfg.replace(remat=REMATS[tc.remat])

    def mixed_loss(params, batch, rng):
        return loss(train_cfg, kind, _compute(params, tc.compute_dtype), batch, rng)

    value_and_grad = trainable_grad(mixed_loss, tc.train_router)

    def train_step(params, opt_state, batch, rng):
        val, g = value_and_grad(params, batch, rng)
        trainable, frozen = split_frozen(params, tc.train_router)
        upd, opt_state = tx.update(g, opt_state, trainable)
        return (merge_frozen(optax.apply_updates(trainable, upd), frozen), opt_state,
                {"loss": val, "grad_norm": optax.tree.norm(g)})

    train = jax.jit(train_step, donate_argnums=(0, 1))
    evaluate = jax.jit(lambda params, batch: eval_outputs(cfg, kind, _compute(params, tc.compute_dtype), batch))
    return tx, train, evaluate


# --------------------------------------------------------------------------- checks before training


def check_data(cfg: ModelConfig, task: Task, train: Sequence[Example], dev: Sequence[Example]) -> None:
    """Everything about the data that can be wrong, before any model work."""
    check_head(cfg, task)
    if not train:
        raise FinetuneError(f"task {task.name}: the training split is empty")
    if not dev:
        raise FinetuneError(f"task {task.name}: the dev split is empty (give --dev, or a training set large "
                            "enough to hold some examples out)")
    for name, ex in (("train", train), ("dev", dev)):
        if task.kind == "generation":
            bad = [i for i, e in enumerate(ex) if e.target is None]
            if bad:
                raise FinetuneError(f"task {task.name} ({name}): example {bad[0]} has no target text; "
                                    "generation needs {\"triples\", \"text\"} records")
        else:
            if any(e.target is not None for e in ex):
                raise FinetuneError(f"task {task.name} ({name}): data-to-text records given to a "
                                    f"{task.kind} task")
            try:
                check_labels(ex, task.label_type, cfg.num_labels if task.kind == "classification" else None,
                             where=f"task {task.name} ({name})")
            except DataError as e:
                raise FinetuneError(str(e)) from None


def split_dev(examples: Sequence[Example], fraction: float, seed: int = 0) -> tuple[list, list]:
    """(train, dev): a seeded random `fraction` of `examples` held out as dev."""
    if not 0 < fraction < 1:
        raise FinetuneError(f"dev fraction must lie in (0, 1), got {fraction}")
    n = len(examples)
    k = int(round(fraction * n))
    if k < 1 or k >= n:
        raise FinetuneError(f"holding out {fraction:.0%} of {n} examples leaves an empty "
                            f"{'dev' if k < 1 else 'training'} split")
    perm = np.random.default_rng(seed).permutation(n)
    dev = set(perm[:k].tolist())
    return [e for i, e in enumerate(examples) if i not in dev], [examples[i] for i in sorted(dev)]


# --------------------------------------------------------------------------- metrics


def task_metrics(task: Task, outputs: dict, dev: dict, tok=None, generations=None) -> dict:
    """Dev metrics of one epoch from the concatenated eval outputs of the real rows."""
    if task.kind == "generation":
        m = {"loss": float(outputs["nll"].sum() / max(outputs["tokens"].sum(), 1.0))}
        if generations is not None:
            try:
                from .metrics import generation_metrics
            except ImportError:  # metrics module not installed yet: dev loss only
                return m
            m.update({k: float(v) for k, v in generation_metrics(*generations).items()
                      if isinstance(v, (int, float, np.floating))})
        return m
    if task.kind == "regression":
        preds, refs = outputs["pred"], dev["labels"]
    else:
        preds, refs = outputs["logits"].argmax(-1), dev["labels"]
    try:
        from .metrics import compute_metrics
    except ImportError:  # until the metrics module is merged: accuracy only
        if task.kind != "classification":
            raise FinetuneError(f"{task.kind} metrics need ntkfuse.finetune.metrics") from None
        return {"accuracy": float(np.mean(preds == refs))}
    # a GLUE task scores its own metric set (f1 for MRPC/QQP, matthews for CoLA); else the kind's
    which = task.name if task.name.startswith("glue/") else task.kind
    return {k: float(v) for k, v in compute_metrics(which, preds, refs).items()}


def _better(task: Task, a: float, b: Optional[float]) -> bool:
    if b is None:
        return True
    return a < b if task.lower_is_better else a > b


# --------------------------------------------------------------------------- checkpoints


def _flat(tree) -> dict:
    return {f"{i:06d}": x for i, x in enumerate(jax.tree_util.tree_leaves(tree))}


def save_state(directory: Path, epoch: int, params, opt_state, info: dict) -> None:
    """Orbax checkpoint of (params, opt_state) after `epoch`, then `state.json` naming it
    (written last and atomically: a checkpoint is used only once complete)."""
    import orbax.checkpoint as ocp
    from ..files import atomic_write
    import json
    import shutil
    directory = Path(directory).absolute()
    name = f"epoch-{epoch}"
    if (directory / name).exists():
        shutil.rmtree(directory / name)
    ck = ocp.StandardCheckpointer()
    ck.save(directory / name, _flat((params, opt_state)))
    ck.wait_until_finished()
    atomic_write(directory / "state.json", json.dumps({**info, "epoch": epoch, "dir": name}, default=float))
    for old in directory.glob("epoch-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def load_state(directory: Path, template, tag: str):
    """(epoch, (params, opt_state), info) of the checkpoint in `directory` whose tag is
    `tag`, with the tree structure of `template`; None when there is none."""
    import json
    directory = Path(directory).absolute()
    try:
        info = json.loads((directory / "state.json").read_text())
    except (OSError, ValueError):
        return None
    if info.get("tag") != tag or not (directory / info.get("dir", "")).is_dir():
        return None
    import orbax.checkpoint as ocp
    leaves, treedef = jax.tree_util.tree_flatten(template)
    target = {f"{i:06d}": jax.ShapeDtypeStruct(x.shape, x.dtype) for i, x in enumerate(leaves)}
    flat = ocp.StandardCheckpointer().restore(directory / info["dir"], target)
    state = jax.tree_util.tree_unflatten(treedef, [flat[f"{i:06d}"] for i in range(len(leaves))])
    return info["epoch"], state, info


# --------------------------------------------------------------------------- the loop


def peak_memory() -> Optional[int]:
    """Peak device memory in bytes where the backend reports it (GPU/TPU), else None."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _prompts(tok, examples, max_length, rows):
    """Right-padded prompts of exactly (rows, max_length): one shape for every batch, so the
    decoder compiles once (extra rows repeat the first prompt and are dropped afterwards)."""
    from ..data import Example as Ex
    from ..data import lm_batch
    # A prompt alone: lm_batch scores every token after the first of a target-less example.
    b = lm_batch(tok, [Ex(e.text) for e in examples], max_length)
    ids, mask = np.asarray(b["input_ids"]), np.asarray(b["attention_mask"])
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = np.pad(ids, ((0, 0), (0, max_length - ids.shape[1])), constant_values=pad)
    mask = np.pad(mask, ((0, 0), (0, max_length - mask.shape[1])))
    extra = rows - ids.shape[0]
    return {"input_ids": np.concatenate([ids, np.repeat(ids[:1], extra, 0)]),
            "attention_mask": np.concatenate([mask, np.repeat(mask[:1], extra, 0)])}


def _generate(cfg, params, tok, examples, tc: TrainConfig):
    """(hypotheses, references) of greedy decoding on `examples`."""
    from .decode import greedy_decode
    hyps = []
    for s in range(0, len(examples), tc.eval_batch_size):
        part = examples[s:s + tc.eval_batch_size]
        g = greedy_decode(cfg, params, _prompts(tok, part, tc.max_length, tc.eval_batch_size), tc.max_new_tokens,
                          eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
        toks, lens = np.asarray(g.tokens), np.asarray(g.lengths)
        hyps += [tok.decode(toks[i, :lens[i]], skip_special_tokens=True).strip() for i in range(len(part))]
    return hyps, [[e.target] for e in examples]


def evaluate(cfg: ModelConfig, task: Task, tc: TrainConfig, params, dev: dict, eval_step, buckets,
             tok=None, dev_examples=None, place=None) -> dict:
    place = place or (lambda b: {k: jnp.asarray(v) for k, v in b.items()})
    outs = []
    for b in batches(dev, tc.eval_batch_size, buckets):
        o = jax.device_get(eval_step(params, place(b)))
        real = b["weight"] > 0
        outs.append({k: np.asarray(v)[real] for k, v in o.items()})
    outputs = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    gens = None
    if task.kind == "generation" and tc.generate and dev_examples is not None:
        try:
            gens = _generate(cfg, params, tok, dev_examples, tc)
        except ImportError:
            gens = None  # decoding not available: dev loss only
    return task_metrics(task, outputs, dev, tok, gens)


def finetune(cfg: ModelConfig, params, tok, train: Sequence[Example], dev: Sequence[Example], task: Task,
             tc: TrainConfig = TrainConfig(), *, teacher=None, layers: Sequence[int] = (),
             ckpt_dir: Optional[str | Path] = None, tag: str = "", progress: bool = False,
             log: Callable[[str], None] = lambda s: None,
             on_epoch_end: Optional[Callable[[int, dict], None]] = None, devices="auto") -> dict:
    """Fine-tune every parameter of `params` on `train`, evaluating on `dev` after each epoch.

    Returns {"history": [per-epoch train loss and dev metrics], "best_epoch", "best"
    (dev metrics of the best epoch by task.metric), "steps", "train_s", "time_s",
    "peak_memory_bytes", "params" (final)}. With `ckpt_dir`, the state is saved after
    every epoch and a later call with the same `tag` resumes after the last saved epoch,
    to the same result (data order and dropout keys depend only on seed, epoch, step).
    `teacher` + `layers` + tc.tune_epochs: layer-wise task tuning of those layers' MLPs first.
    `devices`: "auto" (all local devices when more than one), None or 1, a count, devices or a
    Mesh: data parallel, each batch's rows split across them, params and optimizer state
    replicated (XLA's partitioner reduces the gradients); same numbers within float32 round-off.
    Used when the batch size is a multiple of the device count.
    """
    started = time.perf_counter()
    check(tc)
    check_data(cfg, task, train, dev)
    data_tr = encode(cfg, tok, train, task, tc.max_length)
    data_dev = encode(cfg, tok, dev, task, tc.max_length)
    for d in (data_tr, data_dev):
        check_batch(cfg, {k: d[k] for k in INPUTS if k in d})
    buckets = bucket_lengths(tc.max_length)
    per_epoch = num_batches(len(train), tc.batch_size)
    total = per_epoch * tc.epochs
    tx, train_step, eval_step = steps(cfg, task.kind, tc, total)
    pad = getattr(tok, "pad_token_id", None) or 0
    params = jax.tree_util.tree_map(jnp.array, params)   # own copies: the steps donate their buffers
    if tc.tune_epochs and teacher is not None and layers:
        from ..surrogate.tuning import TuneConfig, layerwise_tune
        tb = [{k: b[k][b["weight"] > 0] for k in INPUTS if k in b}
              for b in batches(data_tr, tc.batch_size, buckets, pad_id=pad)]
        params, _ = layerwise_tune(cfg, params, teacher, tb, layers,
                                   TuneConfig(lr=tc.tune_lr, epochs=tc.tune_epochs, progress=progress))
        params = jax.tree_util.tree_map(jnp.array, params)
    # committed to the device like the params: an uncommitted step count would make the first
    # train step's output differ in placement from its input and compile the step twice
    opt_state = jax.device_put(tx.init(params), jax.devices()[0])
    history, start, best, train_s = [], 0, None, 0.0
    if ckpt_dir is not None:
        got = load_state(Path(ckpt_dir), (params, opt_state), tag)
        if got is not None:
            start, (params, opt_state), info = got
            history, train_s = info["history"], info.get("train_s", 0.0)
            log(f"resumed from {ckpt_dir} after epoch {start}")
    mesh = sharding.make_mesh(devices)
    if mesh is not None and tc.batch_size % sharding.size(mesh):
        mesh = None
    place = None
    if mesh is not None:
        params, opt_state = sharding.replicate((params, opt_state), mesh)
        rows = sharding.rows(mesh)
        place = lambda b: jax.device_put({k: np.asarray(v) for k, v in b.items()},   # noqa: E731
                                         rows if len(b["weight"]) % sharding.size(mesh) == 0
                                         else sharding.replicated(mesh))
    from tqdm.auto import tqdm
    key = dropout_key(tc)
    for epoch in range(start + 1, tc.epochs + 1):
        t0 = time.perf_counter()
        order = np.random.default_rng([tc.seed, epoch]).permutation(len(train))
        ek = jax.random.fold_in(key, epoch)
        losses = []
        bar = tqdm(batches(data_tr, tc.batch_size, buckets, order, pad), total=per_epoch, disable=not progress,
                   desc=f"epoch {epoch}/{tc.epochs}", leave=False, unit="batch")
        for i, b in enumerate(bar):
            params, opt_state, m = train_step(params, opt_state,
                                              place(b) if place else {k: jnp.asarray(v) for k, v in b.items()},
                                              jax.random.fold_in(ek, i))
            losses.append(float(m["loss"]))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        bar.close()
        train_s += time.perf_counter() - t0
        metrics = evaluate(cfg, task, tc, params, data_dev, eval_step, buckets, tok, list(dev), place)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), **metrics,
                        "epoch_s": time.perf_counter() - t0})
        log(f"epoch {epoch}: train loss {history[-1]['train_loss']:.4f}, dev "
            + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        if ckpt_dir is not None:
            save_state(Path(ckpt_dir), epoch, params, opt_state, {"tag": tag, "history": history,
                                                                   "train_s": train_s})
        if on_epoch_end is not None:
            on_epoch_end(epoch, history[-1])
    if mesh is not None:
        params = sharding.to_default_device(params)
    for h in history:
        if _better(task, h[task.metric], best[task.metric] if best else None):
            best = h
    return {"history": history, "best_epoch": best["epoch"], "best": best, "steps": total, "train_s": train_s,
            "time_s": time.perf_counter() - started, "peak_memory_bytes": peak_memory(), "params": params}


__all__ = ["TrainConfig", "check", "loss", "eval_outputs", "token_nll", "steps", "check_data", "split_dev",
           "task_metrics", "evaluate", "finetune", "save_state", "load_state", "peak_memory"]
