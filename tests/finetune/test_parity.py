"""A few fine-tuning steps of ntkfuse equal a PyTorch AdamW loop on the HF model with the
same initial weights, batches and schedule (HF get_linear_schedule_with_warmup, weight
decay off biases and LayerNorm as HF's Trainer, clipping for GPT-2): loss per step and
final params within 1e-5 relative (CPU, float32, dropout off on both sides)."""
from __future__ import annotations

import copy
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkfuse
from ntkfuse.checkpoints import params_from_tensors
from ntkfuse.finetune import TrainConfig, steps
from tests.conftest import random_batch

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

STEPS = 5
RTOL = 1e-5


def _torch_loop(model, batches, tc: TrainConfig, loss_fn):
    """HF Trainer's optimisation, written out: AdamW with two parameter groups, linear
    schedule with ceil(warmup·total) warm-up steps, optional clip_grad_norm_."""
    model = copy.deepcopy(model).eval()   # eval: dropout off, as our steps without an rng
    ln = tuple(m for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    no_decay = {id(p) for m in ln for p in m.parameters()}
    no_decay |= {id(p) for n, p in model.named_parameters() if n.endswith("bias")}
    decay = [p for p in model.parameters() if id(p) not in no_decay]
    rest = [p for p in model.parameters() if id(p) in no_decay]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=tc.lr, betas=(tc.b1, tc.b2), eps=tc.eps)
    sched = transformers.get_linear_schedule_with_warmup(opt, math.ceil(tc.warmup * len(batches)), len(batches))
    losses, norms = [], []
    for b in batches:
        opt.zero_grad()
        val = loss_fn(model, b)
        val.backward()
        if tc.clip:
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip)))
        opt.step()
        sched.step()
        losses.append(float(val.detach()))
    return model, losses, norms


def _jax_loop(cfg, params, batches, tc, kind):
    tx, train_step, _ = steps(cfg, kind, tc, len(batches))
    params = jax.tree_util.tree_map(jnp.array, params)
    state = tx.init(params)
    losses, norms = [], []
    with jax.default_matmul_precision("highest"):
        for b in batches:
            params, state, m = train_step(params, state, {k: jnp.asarray(v) for k, v in b.items()}, None)
            losses.append(float(m["loss"]))
            norms.append(float(m["grad_norm"]))
    return params, losses, norms


def _compare_params(cfg, ours, model):
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    ref = params_from_tensors(cfg, tensors)
    flat_ref = dict(jax.tree_util.tree_flatten_with_path(ref)[0])
    flat = jax.tree_util.tree_flatten_with_path(ours)[0]
    assert len(flat) == len(flat_ref)
    for path, a in flat:
        np.testing.assert_allclose(np.asarray(a), np.asarray(flat_ref[path]), rtol=RTOL, atol=RTOL * 1e-2,
                                   err_msg=jax.tree_util.keystr(path))


def _moved(before, after):
    """Every leaf of the model changed (the steps really trained everything)."""
    for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after)):
        assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_roberta_classifier_steps_equal_torch_adamw(tiny_roberta):
    cfg, params, _, _ = ntkfuse.load(tiny_roberta.dir, tokenizer=False)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(STEPS):
        b = random_batch(rng, [9, 6, 12, 4], cfg.vocab_size, cfg.pad_token_id, avoid=(0, 2))
        b = {k: v.astype(np.int32) for k, v in b.items()}
        b["labels"] = rng.integers(0, cfg.num_labels, 4).astype(np.int32)
        b["weight"] = np.ones(4, np.float32)
        batches.append(b)
    tc = TrainConfig(lr=1e-3, weight_decay=0.1, warmup=0.3, epochs=1, batch_size=4)

    def torch_loss(model, b):
        out = model(input_ids=torch.tensor(b["input_ids"], dtype=torch.long),
                    attention_mask=torch.tensor(b["attention_mask"], dtype=torch.long),
                    labels=torch.tensor(b["labels"], dtype=torch.long))
        return out.loss

    model, t_losses, _ = _torch_loop(tiny_roberta.model, batches, tc, torch_loss)
    ours, losses, _ = _jax_loop(cfg, params, batches, tc, "classification")
    np.testing.assert_allclose(losses, t_losses, rtol=RTOL)
    assert losses[0] != losses[-1]
    _compare_params(cfg, ours, model)
    _moved(params, ours)


def test_gpt2_lm_steps_with_clipping_equal_torch_adamw(tiny_gpt2):
    cfg, params, _, _ = ntkfuse.load(tiny_gpt2.dir, tokenizer=False)
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(STEPS):
        lengths = [10, 7, 12]
        b = random_batch(rng, lengths, cfg.vocab_size, 0)
        b = {k: v.astype(np.int32) for k, v in b.items()}
        tm = np.zeros_like(b["input_ids"])
        for i, n in enumerate(lengths):   # prompt of 4 tokens, then the target
            tm[i, 4:n] = 1
        b["target_mask"] = tm
        b["weight"] = np.ones(len(lengths), np.float32)
        batches.append(b)
    # clip below the gradient norm, so the clipping path is exercised on every step
    tc = TrainConfig(lr=1e-3, weight_decay=0.1, warmup=0.3, clip=0.5, epochs=1, batch_size=3)

    def torch_loss(model, b):
        ids = torch.tensor(b["input_ids"], dtype=torch.long)
        logits = model(input_ids=ids, attention_mask=torch.tensor(b["attention_mask"], dtype=torch.long)).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1)
        nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]
        m = torch.tensor(b["target_mask"][:, 1:], dtype=torch.float32)
        return (nll * m).sum() / m.sum()

    model, t_losses, t_norms = _torch_loop(tiny_gpt2.model, batches, tc, torch_loss)
    ours, losses, norms = _jax_loop(cfg, params, batches, tc, "generation")
    assert min(t_norms) > tc.clip
    np.testing.assert_allclose(norms, t_norms, rtol=RTOL)
    np.testing.assert_allclose(losses, t_losses, rtol=RTOL)
    _compare_params(cfg, ours, model)
    _moved(params, ours)
