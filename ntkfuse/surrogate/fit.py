"""Fit surrogate blocks to collected (input, output) pairs with optax (METHOD.md §4).

All chosen layers are fitted together: their blocks are stacked on a leading layer
axis and the loss is vmapped over it. The summed loss has disjoint parameters per
layer and AdamW is elementwise, so this is exactly L independent fits in one jitted
step. A kind's fixed fields (FusedMLP counts) differ per layer and never train; the
block protocol's `split_fixed` takes them out as a separate stacked array beside the
trainable holder (the block with those fields None), `apply_split` runs the kind's own
forward with them (so gradients w.r.t. centroid j still scale with n_j), and
`join_fixed` puts them back afterwards — they are never differentiated or updated.
A container (MoEMLP) is split sub-block by sub-block (`ContainerKind`) and fitted
through its own forward on the layer's pairs; its router is frozen (`ntkfuse.frozen`:
not differentiated, no optimizer state, no decay). A capacity-bound one (Switch) is fitted
without its capacity and gets it back afterwards: its pairs hold only the tokens it
dispatched (`collect.iter_pairs`), on which the two agree, while capacity counted over
flattened tokens would drop tokens of other sequences (`collect.without_capacity`).

Speed: per-step Python dispatch dominates small fits on accelerators, so many optimizer
steps run in one dispatch — a jitted `lax.scan` over a block of steps that ends at the
next eval / checkpoint / stop boundary (at most `block_steps` long). The training tokens
stay on the device and each block draws its batches there; the host only syncs at
block boundaries, and only when it needs a value (early stopping, checkpoint, end).

Determinism: the held-out split comes from `fold_in(key, 0)`, the order of training
tokens at step s from `fold_in(fold_in(key, 1), epoch(s))`; nothing else is random.
The scan body is the same computation whatever the block length, so how steps are
cut into blocks does not change the result (tested), and a fit resumed from an orbax
checkpoint (params, optimizer state, step, best params and early-stopping state) ends
bitwise equal to an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import sharding
from ..files import atomic_write
from ..frozen import cast_floating, merge_frozen, split_frozen, trainable_grad
from ..models.blocks import activation_fn, fixed_fields
from .collect import capacity_bound, without_capacity

LOSSES = ("mse", "cosine")
COMPUTE_DTYPES = ("float32", "bfloat16")


class FitError(ValueError):
    """Bad fitting configuration, data or blocks."""


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How to fit. Steps count optimizer updates; `eval_every`/`patience` drive early
    stopping on the held-out loss (patience counts evaluations; 0 disables stopping)."""
    loss: str = "mse"                 # "mse" (mean squared error per element) | "cosine" (1 − cos)
    steps: int = 500
    batch_size: int = 256             # tokens per layer per step
    lr: float = 1e-3
    warmup_steps: int = 25
    end_lr_ratio: float = 0.0         # cosine decay to lr * end_lr_ratio
    weight_decay: float = 0.0         # AdamW decoupled decay, on matrices only (not biases)
    b1: float = 0.9
    b2: float = 0.999
    holdout: float = 0.1              # fraction of tokens held out (0: no early stopping)
    eval_every: int = 25
    patience: int = 8
    min_delta: float = 0.0
    checkpoint_every: int = 0         # steps between orbax checkpoints (0: only with stop/end)
    seed: int = 0
    progress: bool = True
    block_steps: int = 256            # most optimizer steps per device dispatch (1: one dispatch per step)
    # "bfloat16": params cast from the float32 master copy and activations in bf16 for the
    # forward/backward (matmuls accumulate in f32, like torch.autocast); loss, grads, AdamW in f32
    compute_dtype: str = "float32"

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise FitError(f"unknown loss {self.loss!r}; valid: {', '.join(LOSSES)}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise FitError(f"unknown compute_dtype {self.compute_dtype!r}; valid: {', '.join(COMPUTE_DTYPES)}")
        for name in ("steps", "batch_size", "eval_every", "block_steps"):
            if int(getattr(self, name)) < 1:
                raise FitError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "patience", "checkpoint_every"):
            if int(getattr(self, name)) < 0:
                raise FitError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.holdout < 1.0:
            raise FitError(f"holdout must be in [0, 1), got {self.holdout}")
        if self.lr <= 0:
            raise FitError(f"lr must be > 0, got {self.lr}")

    def optimizer(self, frozen: bool = False) -> optax.GradientTransformation:
        """AdamW with linear warm-up then cosine decay (the default schedule). `frozen`: the
        blocks hold leaves that must not move (an MoE's router, `ntkfuse.frozen`): AdamW holds
        no state for them and never decays them."""
        warm = min(self.warmup_steps, self.steps - 1) if self.steps > 1 else 0
        sched = optax.warmup_cosine_decay_schedule(0.0 if warm else self.lr, self.lr, max(warm, 0),
                                                   self.steps, self.lr * self.end_lr_ratio)
        mask = lambda p: jax.tree.map(lambda x: x.ndim >= 3, p)  # stacked (L, m, n) matrices
        if not frozen:
            return optax.adamw(sched, b1=self.b1, b2=self.b2, weight_decay=self.weight_decay, mask=mask)
        from ..frozen import frozen_adamw
        return frozen_adamw(sched, b1=self.b1, b2=self.b2, weight_decay=self.weight_decay, decay_mask=mask)


# ---------------------------------------------------------------- stacking

class Stacked(NamedTuple):
    params: Any                 # trainable holders stacked on axis 0
    fixed: Any                  # {fixed field: (L, ...) float32 array}, e.g. fusion counts; {} if none
    cls: Any                    # the block kind
    meta: Optional[tuple]       # per-layer {fixed field: list of values} (the checkpoint fingerprint), or None


class _Split:
    """A sub-block as (holder, fixed) with its kind's forward: what a container's own forward
    calls in place of the expert while fitting (never a pytree, built inside the trace)."""

    def __init__(self, cls, holder, fixed):
        self.cls, self.holder, self.fixed = cls, holder, fixed

    def __call__(self, x, act):
        return self.cls.apply_split(self.holder, self.fixed, x, act)


@dataclasses.dataclass(frozen=True)
class ContainerKind:
    """The stacking protocol of a container block (an MoEMLP) whose sub-blocks may have fixed
    fields (fusion's counts per expert): the holder is the container with each sub-block's
    `split_fixed` holder, `fixed` the tuple of their fixed arrays, and the forward is the
    container's own with every sub-block run through its kind's `apply_split`. The container's
    leaves that `ntkfuse.frozen.frozen_mask` names (the router) get no gradient and no decay."""
    cls: Any
    sub_classes: tuple

    @property
    def __name__(self) -> str:
        return f"{self.cls.__name__}[{','.join(c.__name__ for c in self.sub_classes)}]"

    def split(self, block) -> tuple:
        parts = [s.split_fixed() for s in block.sub_blocks()]
        return block.with_sub_blocks([h for h, _ in parts]), tuple(f for _, f in parts)

    def apply_split(self, holder, fixed, x, act):
        subs = [_Split(c, h, f) for c, h, f in zip(self.sub_classes, holder.sub_blocks(), fixed)]
        return holder.with_sub_blocks(subs)(x, act)

    def join_fixed(self, holder, fixed) -> Any:
        return holder.with_sub_blocks([c.join_fixed(h, f) for c, h, f in
                                       zip(self.sub_classes, holder.sub_blocks(), fixed)])


def _fixed_meta(block) -> dict:
    """A block's fixed values as JSON lists (what checkpoints written with static counts held)."""
    return {n: np.asarray(getattr(block, n)).tolist() for n in fixed_fields(type(block))}


def _stack_containers(blocks: Sequence) -> Stacked:
    subs = [b.sub_blocks() for b in blocks]
    sigs = {tuple(type(s) for s in ss) for ss in subs}
    if len(sigs) != 1:
        raise FitError("container blocks must have sub-blocks of the same kinds to fit together, got "
                       f"{sorted(str([c.__name__ for c in sig]) for sig in sigs)}")
    kind = ContainerKind(type(blocks[0]), next(iter(sigs)))
    split = [kind.split(b) for b in blocks]
    holders = [h for h, _ in split]
    if len({jax.tree.structure(h) for h in holders}) != 1 or \
            len({tuple(x.shape for x in jax.tree.leaves(h)) for h in holders}) != 1:
        raise FitError("container blocks must have the same structure and shapes to be stacked")
    params = jax.tree.map(lambda *xs: jnp.stack(xs), *holders)
    fixed = jax.tree.map(lambda *fs: jnp.stack(fs), *[f for _, f in split])
    meta = tuple(tuple(_fixed_meta(s) for s in ss) for ss in subs)
    return Stacked(params, fixed, kind, meta)


def stack_blocks(blocks: Sequence) -> Stacked:
    """Stack same-kind, same-shape blocks on a leading layer axis (containers: `ContainerKind`)."""
    if not blocks:
        raise FitError("no blocks to fit")
    kinds = {type(b).__name__ for b in blocks}
    if len(kinds) != 1:
        raise FitError(f"blocks must all be the same kind to fit together, got {sorted(kinds)}")
    if blocks[0].sub_blocks() is not None:
        return _stack_containers(blocks)
    cls = type(blocks[0])
    names = fixed_fields(cls)
    meta = tuple(_fixed_meta(b) for b in blocks) if names else None
    split = [b.split_fixed() for b in blocks]
    holders = [h for h, _ in split]
    defs = {jax.tree.structure(h) for h in holders}
    shapes = {tuple(x.shape for x in jax.tree.leaves(h)) for h in holders}
    if len(defs) != 1 or len(shapes) != 1:
        raise FitError(f"blocks must have the same structure and shapes to be stacked, got shapes {sorted(shapes)}")
    params = jax.tree.map(lambda *xs: jnp.stack(xs), *holders)
    fixed = {n: jnp.stack([f[n] for _, f in split]) for n in names}
    return Stacked(params, fixed, cls, meta)


def unstack_blocks(st: Stacked, params=None) -> list:
    params = st.params if params is None else params
    n = jax.tree.leaves(params)[0].shape[0]
    pick = lambda t, i: jax.tree.map(lambda x: x[i], t)  # noqa: E731
    return [st.cls.join_fixed(pick(params, i), pick(st.fixed, i)) for i in range(n)]


def _with_capacities(blocks: list, capacities: Sequence) -> list:
    """Put back the expert capacity each block had before fitting (None: none)."""
    return [b if c is None else dataclasses.replace(b, capacity=c) for b, c in zip(blocks, capacities)]


def loss_fn(kind: str, pred, target):
    if kind == "mse":
        return jnp.mean(jnp.square(pred - target))
    eps = 1e-12
    cos = jnp.sum(pred * target, -1) / (jnp.linalg.norm(pred, axis=-1) * jnp.linalg.norm(target, axis=-1) + eps)
    return jnp.mean(1.0 - cos)


# ---------------------------------------------------------------- the fit

class FitState(NamedTuple):
    step: jax.Array
    params: Any
    opt_state: Any
    best_params: Any
    best_loss: jax.Array        # (L,) best held-out loss so far (inf before the first eval)
    bad: jax.Array              # (L,) evaluations since the layer last improved
    done: jax.Array             # () bool: early-stopped


class FitResult(NamedTuple):
    blocks: list                # fitted blocks (best held-out params when holdout > 0)
    state: FitState
    history: dict               # {"step": [...], "train": [[L]...], "heldout": [[L]...]}
    stopped_early: bool


def _split(key, n: int, holdout: float):
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, 0), n))
    n_hold = int(round(holdout * n)) if holdout > 0 else 0
    if holdout > 0 and n_hold < 1:
        n_hold = 1
    if n - n_hold < 1:
        raise FitError(f"{n} tokens leave nothing to train on with holdout={holdout}")
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


@functools.lru_cache(maxsize=32)
def _build(fc: FitConfig, activation: str, cls, n_train: int, mesh=None):
    act = activation_fn(activation)
    tx = fc.optimizer(frozen=isinstance(cls, ContainerKind))
    bs = min(fc.batch_size, n_train)
    per_epoch = n_train // bs
    order_key = jax.random.fold_in(jax.random.PRNGKey(fc.seed), 1)
    cdt = jnp.dtype(fc.compute_dtype)

    def layer_loss(p, fixed, x, y):
        if cdt != jnp.float32:   # the cast is inside the grad: gradients reach the f32 master params
            p = cast_floating(p, cdt)   # fixed fields are not in p; `fixed` stays float32 (exact)
            x = x.astype(cdt)
        pred = cls.apply_split(p, fixed, x, act)
        return loss_fn(fc.loss, pred.astype(jnp.float32), y)

    def losses(params, fixed, x, y):
        return jax.vmap(layer_loss)(params, fixed, x, y)

    # the holders' trainable leaves only (a container's router is frozen; fixed fields are in `fixed`)
    value_and_grad = trainable_grad(lambda p, fixed, x, y: (lambda l: (l.sum(), l))(losses(p, fixed, x, y)),
                                    has_aux=True)

    def epoch_perm(epoch):
        return jax.random.permutation(jax.random.fold_in(order_key, epoch), n_train)

    def step_fn(state: FitState, perms, epoch0, fixed, x, y):
        epoch, i = state.step // per_epoch, state.step % per_epoch
        idx = jax.lax.dynamic_slice(perms[epoch - epoch0], (i * bs,), (bs,))
        xb, yb = jnp.take(x, idx, axis=1), jnp.take(y, idx, axis=1)
        if mesh is not None:   # data parallel: the batch's tokens split across devices, params replicated
            tokens = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, sharding.mesh_axis(mesh)))
            xb, yb = jax.lax.with_sharding_constraint((xb, yb), tokens)
        (_, per), grads = value_and_grad(state.params, fixed, xb, yb)
        trainable, held = split_frozen(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, trainable)
        params = merge_frozen(optax.apply_updates(trainable, updates), held)
        return state._replace(step=state.step + 1, params=params, opt_state=opt_state), per

    @functools.partial(jax.jit, static_argnums=4)
    def train_block(state: FitState, fixed, x, y, n: int):
        """`n` optimizer steps in one dispatch; returns the state and the last step's per-layer
        training loss. The permutations of every epoch the block touches are drawn up front
        (at most n // per_epoch + 2 of them), so the scan body has no branch."""
        epoch0 = state.step // per_epoch
        perms = jax.vmap(epoch_perm)(epoch0 + jnp.arange(n // per_epoch + 2))

        def body(carry, _):
            st, _ = carry
            return step_fn(st, perms, epoch0, fixed, x, y), None

        L = jax.tree.leaves(state.params)[0].shape[0]
        (state, last), _ = jax.lax.scan(body, (state, jnp.zeros((L,), jnp.float32)), None, length=n)
        return state, last

    @jax.jit
    def evaluate(state: FitState, fixed, x, y):
        cur = losses(state.params, fixed, x, y)
        better = cur < state.best_loss - fc.min_delta
        sel = lambda new, old: jnp.where(better.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
        best_params = jax.tree.map(sel, state.params, state.best_params)
        bad = jnp.where(better, 0, state.bad + 1)
        done = jnp.all(bad >= fc.patience) if fc.patience > 0 else jnp.array(False)
        return state._replace(best_params=best_params, best_loss=jnp.where(better, cur, state.best_loss),
                              bad=bad, done=done), cur

    return tx, train_block, evaluate


def init_state(fc: FitConfig, params, frozen: bool = False) -> FitState:
    L = jax.tree.leaves(params)[0].shape[0]
    return FitState(jnp.array(0, jnp.int32), params, fc.optimizer(frozen).init(params), params,
                    jnp.full((L,), jnp.inf, jnp.float32), jnp.zeros((L,), jnp.int32), jnp.array(False))


def _fingerprint(fc: FitConfig, activation, x, y, st: Stacked) -> dict:
    d = dataclasses.asdict(fc)
    for k in ("progress", "checkpoint_every", "block_steps"):   # do not change the result
        d.pop(k)
    if d["compute_dtype"] == "float32":   # fingerprints written before the field existed still match
        d.pop("compute_dtype")
    return {"fit_config": d, "activation": activation, "x_shape": list(x.shape), "y_shape": list(y.shape),
            "kind": f"{st.cls.__name__}:" + str(jax.tree.structure(st.params)),
            "param_shapes": [list(a.shape) for a in jax.tree.leaves(st.params)],
            "data_sum": float(np.asarray(x, np.float64).sum() + np.asarray(y, np.float64).sum()),
            "fixed": st.meta}


def _manager(directory):
    import orbax.checkpoint as ocp
    opts = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False, create=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=opts)


def _save(mngr, state: FitState, history: dict):
    import orbax.checkpoint as ocp
    step = int(state.step)
    if step in mngr.all_steps():
        return
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            history=ocp.args.JsonSave(history)))
    mngr.wait_until_finished()


def _restore(mngr, template: FitState):
    import orbax.checkpoint as ocp
    step = mngr.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), template)
    got = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                     history=ocp.args.JsonRestore()))
    return got["state"], dict(got["history"])


def fit_blocks(blocks: Sequence, x, y, fc: FitConfig = FitConfig(), activation: str = "gelu", *,
               checkpoint_dir: Optional[str] = None, stop_at: Optional[int] = None, devices="auto") -> FitResult:
    """Fit `blocks[l]` to map `x[l]` → `y[l]` (x, y: (L, N, d) arrays), all layers together.

    `checkpoint_dir`: orbax checkpoints every `fc.checkpoint_every` steps and at the end;
    an existing checkpoint of the same fit (same config, data and blocks) is resumed.
    `stop_at`: stop after that many total steps without a final checkpoint, as a kill
    would (for testing resume).
    `devices`: "auto" (all local devices when more than one), None or 1, a count, devices or a
    Mesh: data parallel, each step's batch of tokens split across them (params and data
    replicated; XLA's partitioner reduces the gradients), same numbers within float32
    round-off. Used only when the batch size is a multiple of the device count.
    """
    if not isinstance(x, jax.Array):
        x = np.asarray(x)
    if not isinstance(y, jax.Array):
        y = np.asarray(y)
    if x.ndim != 3 or y.ndim != 3 or x.shape[:2] != y.shape[:2]:
        raise FitError(f"x, y must be (layers, tokens, d) with matching layers/tokens; got {x.shape}, {y.shape}")
    if x.shape[0] != len(blocks):
        raise FitError(f"{len(blocks)} blocks but data for {x.shape[0]} layers")
    activation_fn(activation)
    capacities = [b.capacity if capacity_bound(b) else None for b in blocks]
    st = stack_blocks([without_capacity(b) for b in blocks])
    key = jax.random.PRNGKey(fc.seed)
    tr, ho = _split(key, x.shape[1], fc.holdout)
    if len(ho):
        xt, yt = jnp.asarray(x[:, tr]), jnp.asarray(y[:, tr])
        xh, yh = jnp.asarray(x[:, ho]), jnp.asarray(y[:, ho])
    else:   # no split: use the arrays as given (device arrays are not copied)
        xt, yt, xh, yh = jnp.asarray(x), jnp.asarray(y), None, None
    mesh = sharding.make_mesh(devices)
    if mesh is not None and min(fc.batch_size, len(tr)) % sharding.size(mesh):
        mesh = None
    tx, train_block, evaluate = _build(fc, activation, st.cls, len(tr), mesh)
    state = init_state(fc, st.params, isinstance(st.cls, ContainerKind))
    fixed = st.fixed
    history = {"step": [], "train": [], "heldout": []}
    mngr = None
    if checkpoint_dir is not None:
        fp = _fingerprint(fc, activation, x, y, st)
        os.makedirs(checkpoint_dir, exist_ok=True)
        fpath = os.path.join(checkpoint_dir, "fit.json")
        if os.path.exists(fpath):
            with open(fpath) as f:
                old = json.load(f)
            if old != json.loads(json.dumps(fp)):
                raise FitError(f"{checkpoint_dir} holds a checkpoint of a different fit (config, data or blocks "
                               "differ); use another directory or delete it")
        else:
            atomic_write(fpath, json.dumps(fp))
        mngr = _manager(checkpoint_dir)
        got = _restore(mngr, state)
        if got is not None:
            state, history = got
    if mesh is not None:
        state, fixed, xt, yt = sharding.replicate((state, fixed, xt, yt), mesh)
        if xh is not None:
            xh, yh = sharding.replicate((xh, yh), mesh)
    pending = []                             # (step, train, heldout) device arrays not yet in history

    def flush():
        for s_, t_, h_ in pending:
            history["step"].append(s_)
            history["train"].append(np.asarray(t_).tolist())
            history["heldout"].append(np.asarray(h_).tolist())
        pending.clear()

    from tqdm.auto import tqdm
    bar = tqdm(total=fc.steps, initial=int(state.step), disable=not fc.progress, desc="fit", leave=False)
    s = int(state.step)                      # host copy: the host never waits on the device inside a block
    done = bool(state.done)
    end = fc.steps if stop_at is None else min(fc.steps, max(stop_at, s))
    ce = fc.checkpoint_every if mngr is not None else 0
    while s < end and not done:
        nxt = min(end, s + fc.block_steps)
        for every in ((fc.eval_every if xh is not None else 0), ce):
            if every:
                nxt = min(nxt, (s // every + 1) * every)
        state, last = train_block(state, fixed, xt, yt, nxt - s)
        bar.update(nxt - s)
        s = nxt
        if xh is not None and (s % fc.eval_every == 0 or s == fc.steps):
            state, cur = evaluate(state, fixed, xh, yh)
            pending.append((s, last, cur))
            if fc.patience > 0:
                done = bool(state.done)
            if fc.progress:
                bar.set_postfix(heldout=float(np.mean(np.asarray(cur))))
        if ce and s % ce == 0:
            flush()
            _save(mngr, state, history)
    bar.close()
    flush()
    if mesh is not None:
        state = sharding.to_default_device(state)
    if stop_at is not None and s >= stop_at and s < fc.steps and not done:   # simulated kill: no final save
        return FitResult(_with_capacities(unstack_blocks(st, state.params), capacities), state, history, False)
    if mngr is not None:
        _save(mngr, state, history)
        mngr.close()
    final = state.best_params if xh is not None else state.params
    return FitResult(_with_capacities(unstack_blocks(st, final), capacities), state, history, bool(state.done))


@functools.partial(jax.jit, static_argnums=(3, 4))
def _block_loss(block, x, y, activation, loss):
    return loss_fn(loss, block(x, activation_fn(activation)), y)


def evaluate_blocks(blocks: Sequence, x, y, activation: str = "gelu", loss: str = "mse") -> np.ndarray:
    """Per-layer loss of `blocks` on (L, N, d) pairs (no fitting; a capacity-bound MoE block
    without its capacity, as it is fitted)."""
    if loss not in LOSSES:
        raise FitError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
    return np.array([float(_block_loss(without_capacity(b), jnp.asarray(x[i]), jnp.asarray(y[i]), activation, loss))
                     for i, b in enumerate(blocks)])


def _group_key(block):
    subs = block.sub_blocks()
    t = block.split_fixed()[0] if subs is None else ContainerKind(type(block), tuple(map(type, subs))).split(block)[0]
    return type(block).__name__, str(jax.tree.structure(t)), tuple(tuple(x.shape) for x in jax.tree.leaves(t))


def fit_grouped(blocks: Sequence, x, y, fc: FitConfig = FitConfig(), activation: str = "gelu", *,
                checkpoint_dir: Optional[str] = None) -> tuple[list, dict]:
    """`fit_blocks` for blocks of mixed kinds/widths (e.g. a width plan from `knapsack`):
    layers are grouped by (kind, shapes), each group fitted stacked (checkpoints under
    `checkpoint_dir/group<i>`). Returns (fitted blocks in input order, {group: FitResult})."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 3 or x.shape[0] != len(blocks):
        raise FitError(f"{len(blocks)} blocks but data of shape {x.shape}")
    groups: dict = {}
    for i, b in enumerate(blocks):
        groups.setdefault(_group_key(b), []).append(i)
    out, results = [None] * len(blocks), {}
    for g, idx in enumerate(groups.values()):
        ck = None if checkpoint_dir is None else os.path.join(checkpoint_dir, f"group{g}")
        res = fit_blocks([blocks[i] for i in idx], x[idx], y[idx], fc, activation, checkpoint_dir=ck)
        for i, b in zip(idx, res.blocks):
            out[i] = b
        results[tuple(idx)] = res
    return out, results
