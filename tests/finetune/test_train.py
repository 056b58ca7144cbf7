"""ntkfuse.finetune: decay mask, schedule, fusion's fixed counts under real updates,
the epoch loop (learning, best epoch, resume to the same result) and bad input."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkfuse.compress import compress
from ntkfuse.data import Example
from ntkfuse.finetune import (FinetuneError, TrainConfig, batches, bucket_lengths, decay_mask, encode, finetune,
                              get_task, linear_schedule, split_dev, steps, warmup_steps)
from ntkfuse.models import FusedMLP
from ntkfuse.models.blocks import fixed_fields
from tests.finetune.helpers import WordTok, sentiment, tiny, webnlg

FAST = TrainConfig(lr=2e-2, epochs=3, batch_size=8, max_length=16, eval_batch_size=8, weight_decay=0.1)


def _names(mask):
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}


def test_decay_mask_skips_biases_and_layernorm_only():
    cfg, p = tiny()
    p = compress(cfg, p, "fusion", [1], 8, jax.random.PRNGKey(0), n_init=1)
    m = _names(decay_mask(p))
    no = sorted(k for k, v in m.items() if not v)
    assert all(k.endswith(("['b']", ".b1", ".b2", "['bias']", "['scale']", ".counts")) for k in no)
    yes = sorted(k for k, v in m.items() if v)
    assert all(k.endswith(("['w']", ".w1", ".w2", "['word']", "['position']", "['token_type']")) for k in yes)
    assert "['layers'][1]['mlp'].w1" in yes and "['layers'][1]['mlp'].b1" in no   # the fused block
    assert "['embed']['ln']['scale']" in no and "['head']['out']['b']" in no
    assert "['layers'][1]['mlp'].counts" in no   # fixed (and AdamW runs on the trainable leaves only)
    assert len(yes) + len(no) == len(jax.tree_util.tree_leaves(p))


def test_schedule_is_hf_linear_with_warmup():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    total, lr = 50, 2e-5
    warm = warmup_steps(total, 0.06)
    assert warm == math.ceil(0.06 * total) == 3
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = transformers.get_linear_schedule_with_warmup(opt, warm, total)
    ref = []
    for _ in range(total + 2):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = [float(linear_schedule(lr, total, warm)(c)) for c in range(total + 2)]
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-12)
    assert ours[0] == 0.0 and ours[warm] == pytest.approx(lr) and ours[total] == 0.0


def test_fused_counts_fixed_while_everything_else_trains():
    """A real AdamW update with weight decay on: every FusedMLP keeps its counts bit for bit, the
    optimizer state has no moment for them (by construction: AdamW runs on the trainable
    partition), the train loss's gradient has no counts leaf, and the centroids (and all else) move."""
    from ntkfuse.frozen import frozen_mask, trainable_grad
    from ntkfuse.finetune.train import loss
    cfg, p = tiny()
    p = compress(cfg, p, "fusion", [0, 1], 8, jax.random.PRNGKey(0), n_init=1)
    counts = {l: np.asarray(p["layers"][l]["mlp"].counts) for l in (0, 1)}
    assert fixed_fields(FusedMLP) == ("counts",) and counts[0].sum() == cfg.intermediate and counts[0].max() > 1
    tok, task = WordTok(), get_task("sample:sentiment")
    data = encode(cfg, tok, sentiment(8), task, 16)
    b = {k: jnp.asarray(v) for k, v in next(batches(data, 8, (16,))).items()}
    tc = FAST.replace(warmup=0.0)
    assert tc.weight_decay > 0
    tx, train_step, _ = steps(cfg, "classification", tc, 4)
    state = tx.init(p)
    leaves = jax.tree_util.tree_leaves(state)
    n = len(jax.tree_util.tree_leaves(p))
    n_fixed = sum(jax.tree_util.tree_leaves(frozen_mask(p)))
    assert n_fixed == 2   # one counts leaf per fused layer
    assert len(leaves) == 2 * (n - n_fixed) + sum(1 for x in leaves if x.ndim == 0)   # mu, nu per param + steps
    adam = next(s for s in jax.tree_util.tree_leaves(state, is_leaf=lambda s: hasattr(s, "mu")) if hasattr(s, "mu"))
    assert all(adam.mu["layers"][l]["mlp"].counts is None and adam.nu["layers"][l]["mlp"].counts is None
               for l in (0, 1))
    _, g = trainable_grad(lambda q: loss(cfg, "classification", q, b))(p)
    assert all(g["layers"][l]["mlp"].counts is None for l in (0, 1))
    assert len(jax.tree_util.tree_leaves(g)) == n - n_fixed
    q, state, _ = train_step(jax.tree_util.tree_map(jnp.array, p), state, b, None)
    q, state, _ = train_step(q, state, b, None)
    for l in (0, 1):
        got = q["layers"][l]["mlp"]
        assert isinstance(got, FusedMLP) and got.counts.dtype == jnp.float32
        assert np.asarray(got.counts).tobytes() == counts[l].tobytes()   # bit-identical, weight decay on
        for name in ("w1", "b1", "w2", "b2"):
            assert not np.array_equal(np.asarray(getattr(got, name)),
                                      np.asarray(getattr(p["layers"][l]["mlp"], name))), (l, name)
    for a, c, f in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(q),
                       jax.tree_util.tree_leaves(frozen_mask(p))):
        assert np.array_equal(np.asarray(a), np.asarray(c)) == f   # all else moves


def test_remat_changes_memory_not_numbers():
    """Under every TrainConfig.remat, two AdamW steps with dropout on see the same losses and
    gradient norms (the backward recomputes activations and masks from the same key). Params
    are not compared: AdamW's g/(|g|+eps) turns round-off of near-zero gradients into
    lr-sized differences."""
    cfg, p = tiny()
    cfg = cfg.replace(dropout=0.2, attention_dropout=0.1)
    tok, task = WordTok(), get_task("sample:sentiment")
    b = {k: jnp.asarray(v) for k, v in next(batches(encode(cfg, tok, sentiment(8), task, 16), 8, (16,))).items()}
    key = jax.random.key(3, impl="rbg")
    for dtype, rtol in (("float32", 1e-5), ("bfloat16", 1e-2)):
        out = {}
        for remat in ("none", "dots", "layer"):
            tx, train_step, _ = steps(cfg, "classification", FAST.replace(warmup=0.0, remat=remat,
                                                                          compute_dtype=dtype), 4)
            q, state = jax.tree_util.tree_map(jnp.array, p), tx.init(p)
            out[remat] = []
            for i in range(2):
                q, state, m = train_step(q, state, b, jax.random.fold_in(key, i))
                out[remat] += [float(m["loss"]), float(m["grad_norm"])]
        for remat in ("dots", "layer"):
            np.testing.assert_allclose(out[remat], out["none"], rtol=rtol)
        assert out["none"][0] != out["none"][2]                      # the first step changed the model


def test_batches_fixed_shapes_and_buckets():
    cfg, _ = tiny()
    assert bucket_lengths(64) == (16, 32, 64) and bucket_lengths(16) == (16,)
    ex = sentiment(10) + [Example(" ".join(["word"] * 20), 1)]
    data = encode(cfg, WordTok(), ex, get_task("sample:sentiment"), 32)
    got = list(batches(data, 4, bucket_lengths(32)))
    assert [b["input_ids"].shape for b in got] == [(4, 16), (4, 16), (4, 32)]
    assert got[-1]["weight"].tolist() == [1, 1, 1, 0]
    assert sum(int(b["weight"].sum()) for b in got) == len(ex)


def test_sentence_pairs_get_token_types():
    cfg, _ = tiny()
    ex = [Example("a b", 1, None, "c d e"), Example("f", 0, None, "g")]
    data = encode(cfg, WordTok(), ex, get_task("classification", train="x.tsv"), 12)
    assert data["token_type_ids"][0, :8].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert data["labels"].tolist() == [1, 0]


def test_finetune_learns_and_picks_best_epoch():
    cfg, p = tiny()
    train, dev = split_dev(sentiment(40), 0.25)
    r = finetune(cfg, p, WordTok(), train, dev, get_task("sample:sentiment"), FAST.replace(epochs=8))
    h = r["history"]
    assert [x["epoch"] for x in h] == list(range(1, 9))
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert r["best"]["accuracy"] == max(x["accuracy"] for x in h) and r["best"]["accuracy"] >= 0.9
    assert r["best_epoch"] == min(x["epoch"] for x in h if x["accuracy"] == r["best"]["accuracy"])
    assert r["steps"] == 8 * math.ceil(30 / 8)


def test_regression_and_generation_losses_train():
    cfg, p = tiny(num_labels=1)
    ex = [Example(e.text, float(e.label) * 4.0 + 0.5) for e in sentiment(24)]
    task = get_task("regression", train="x.tsv")
    data = encode(cfg, WordTok(), ex, task, 16)
    assert data["labels"].dtype == np.float32
    tx, train_step, _ = steps(cfg, "regression", FAST, 10)
    b = {k: jnp.asarray(v) for k, v in next(batches(data, 8, (16,))).items()}
    q, s = jax.tree_util.tree_map(jnp.array, p), tx.init(p)
    vals = []
    for _ in range(10):
        q, s, m = train_step(q, s, b, None)
        vals.append(float(m["loss"]))
    assert vals[-1] < vals[0]
    gcfg, gp = tiny("gpt2")
    r = finetune(gcfg, gp, WordTok(), webnlg(8), webnlg(4), get_task("sample:webnlg"),
                 FAST.replace(epochs=2, generate=False, clip=1.0))
    assert r["history"][-1]["loss"] < r["history"][0]["loss"] and r["best_epoch"] == 2


def test_resume_after_interruption_gives_the_same_result(tmp_path):
    cfg, p = tiny()
    train, dev = split_dev(sentiment(24), 0.25)
    task, tc = get_task("sample:sentiment"), FAST.replace(epochs=3)
    full = finetune(cfg, p, WordTok(), train, dev, task, tc)

    def stop(epoch, _):
        if epoch == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, p, WordTok(), train, dev, task, tc, ckpt_dir=tmp_path, tag="t", on_epoch_end=stop)
    seen = []
    again = finetune(cfg, p, WordTok(), train, dev, task, tc, ckpt_dir=tmp_path, tag="t",
                     on_epoch_end=lambda e, _: seen.append(e))
    assert seen == [3]   # epochs 1-2 came from the checkpoint
    for a, b in zip(jax.tree_util.tree_leaves(full["params"]), jax.tree_util.tree_leaves(again["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    strip = lambda h: [{k: v for k, v in x.items() if k != "epoch_s"} for x in h]  # noqa: E731
    assert strip(again["history"]) == strip(full["history"])
    # another tag: the checkpoint is not reused
    seen.clear()
    finetune(cfg, p, WordTok(), train, dev, task, tc.replace(epochs=1), ckpt_dir=tmp_path, tag="other",
             on_epoch_end=lambda e, _: seen.append(e))
    assert seen == [1]


# --------------------------------------------------------------------------- bad input: errors before training


@pytest.fixture
def no_training(monkeypatch):
    """Any attempt to build the train step fails the test: errors must come first."""
    import ntkfuse.finetune.train as T
    monkeypatch.setattr(T, "steps", lambda *a, **k: pytest.fail("training started before the error"))


def test_unknown_task():
    with pytest.raises(FinetuneError, match=r"unknown task 'glue/nope'; known: glue/cola"):
        get_task("glue/nope")
    with pytest.raises(FinetuneError, match="--train"):
        get_task("classification")


@pytest.mark.parametrize("case, match", [
    ("no_labels", r"have no label"),
    ("label_out_of_range", r"labels? 2 outside the head's classes 0..1"),
    ("empty_dev", r"dev split is empty"),
    ("regression_on_classifier", r"regression: it needs a head with one output .* has 2 classes"),
    ("generation_on_encoder", r"needs a language model"),
    ("float_class_label", r"not an integer class index"),
])
def test_bad_data_fails_before_training(no_training, case, match):
    cfg, p = tiny()
    train, task = sentiment(8), get_task("sample:sentiment")
    dev = sentiment(4, seed=1)
    if case == "no_labels":
        train = train[:-1] + [Example("no label here")]
    elif case == "label_out_of_range":
        dev = dev + [Example("three classes", 2)]
    elif case == "empty_dev":
        dev = []
    elif case == "regression_on_classifier":
        task = get_task("glue/stsb")
    elif case == "generation_on_encoder":
        task = get_task("sample:webnlg")
    elif case == "float_class_label":
        train = train + [Example("half", 0.5)]
    with pytest.raises(FinetuneError, match=match):
        finetune(cfg, p, WordTok(), train, dev, task, FAST)


@pytest.mark.parametrize("field, value, match", [
    ("lr", 0.0, r"learning rate \(lr\) must be a positive number, got 0.0"),
    ("lr", -1e-5, r"learning rate \(lr\) must be a positive"),
    ("epochs", 0, r"epochs must be a positive integer"),
    ("batch_size", 2.5, r"batch_size must be a positive integer"),
    ("warmup", 1.0, r"warmup is a fraction"),
    ("clip", 0.0, r"clip must be a positive"),
])
def test_bad_train_settings(field, value, match):
    with pytest.raises(FinetuneError, match=match):
        TrainConfig(**{field: value})


def test_split_dev_is_seeded_and_disjoint():
    ex = sentiment(20)
    tr, dv = split_dev(ex, 0.25, seed=3)
    assert len(dv) == 5 and len(tr) == 15 and not set(tr) & set(dv)
    assert split_dev(ex, 0.25, seed=3) == (tr, dv) and split_dev(ex, 0.25, seed=4) != (tr, dv)
    with pytest.raises(FinetuneError, match="empty dev split"):
        split_dev(ex[:2], 0.1)


def test_generation_dev_set_is_greedy_decoded():
    pytest.importorskip("ntkfuse.finetune.decode")
    from ntkfuse.finetune import train as T
    cfg, p = tiny("gpt2")
    tc = FAST.replace(max_new_tokens=5)
    hyps, refs = T._generate(cfg, p, WordTok(), webnlg(3), tc)
    assert len(hyps) == 3 and all(isinstance(h, str) for h in hyps)
    assert refs == [[e.target] for e in webnlg(3)]


def test_layerwise_task_tuning_first_changes_only_the_compressed_mlps():
    """tune_epochs=1 with a teacher: the compressed layer's MLP moves towards the teacher
    before fine-tuning; with a negligible fine-tuning lr nothing else moves."""
    cfg, p = tiny()
    small = compress(cfg, p, "prune", [1], 8, jax.random.PRNGKey(0))
    train, dev = sentiment(16), sentiment(8, seed=1)
    task, tc = get_task("sample:sentiment"), FAST.replace(lr=1e-12, epochs=1, tune_lr=1e-2)
    plain = finetune(cfg, small, WordTok(), train, dev, task, tc)["params"]
    tuned = finetune(cfg, small, WordTok(), train, dev, task, tc.replace(tune_epochs=1), teacher=p,
                     layers=[1])["params"]
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(plain)[0], jax.tree_util.tree_leaves(tuned)):
        diff = float(np.abs(np.asarray(a) - np.asarray(b)).max())
        if "['layers'][1]['mlp']" in jax.tree_util.keystr(path):
            assert diff > 1e-4, jax.tree_util.keystr(path)
        else:
            assert diff < 1e-8, jax.tree_util.keystr(path)
