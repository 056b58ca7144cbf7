"""Which parameters the NTK differentiates.

A selector is a frozen (hashable) dataclass over *key paths*: each leaf of `params`
has a path normalised to a tuple of str/int, e.g. ``("layers", 4, "mlp", "w1")`` for
``params["layers"][4]["mlp"].w1`` or ``("embed", "word")``. `split` returns
(selected, rest), two pytrees of the same structure as `params` with ``None`` in the
other's places, and `merge` puts them back together, so a function can be
differentiated w.r.t. `selected` alone while `rest` is closed over.

Fixed block fields (FusedMLP's `counts`) are leaves but never parameters: `mask`, `split`
and `paths` leave them out whatever the rule (`ntkfuse.frozen.frozen_mask`), so they stay in
`rest`, arguments of the compiled kernels rather than constants baked into them. A router
is a parameter of the model and is differentiated when selected.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax

from ..frozen import frozen_mask

_IS_NONE = lambda x: x is None  # noqa: E731


class SelectorError(ValueError):
    """A selector picks no parameters, or names layers the model does not have."""


def _key(k):
    if isinstance(k, jax.tree_util.DictKey):
        return k.key
    if isinstance(k, jax.tree_util.SequenceKey):
        return k.idx
    if isinstance(k, jax.tree_util.GetAttrKey):
        return k.name
    if isinstance(k, jax.tree_util.FlattenedIndexKey):
        return k.key
    return str(k)


def normalise_path(path) -> tuple:
    """jax key path -> tuple of plain str/int."""
    return tuple(_key(k) for k in path)


def leaf_paths(params) -> list[tuple]:
    """Normalised paths of all leaves, in `jax.tree_util` flatten order."""
    return [normalise_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


@dataclasses.dataclass(frozen=True)
class Selector:
    """Picks the leaves whose normalised path satisfies the rule.

    kind: "mlp_layers" (MLP leaves of `layers`), "all_mlps", "all", "path" (`predicate`).
    train_router: MoE routers are selected too (default False: the kernel is the one of the
    parameters fine-tuning trains, and fine-tuning keeps routers frozen unless asked).
    """
    kind: str
    layers: Optional[tuple] = None
    predicate: Optional[Callable[[tuple], bool]] = None
    train_router: bool = False

    def __call__(self, path: tuple) -> bool:
        if self.kind == "all":
            return True
        is_mlp = len(path) >= 3 and path[0] == "layers" and path[2] == "mlp"
        if self.kind == "all_mlps":
            return is_mlp
        if self.kind == "mlp_layers":
            return is_mlp and path[1] in self.layers
        if self.kind == "path":
            return bool(self.predicate(path))
        raise SelectorError(f"unknown selector kind {self.kind!r}; known: mlp_layers, all_mlps, all, path")

    def mask(self, params):
        """Pytree of bools, True where a leaf is selected (never a fixed block field, never an MoE
        router unless `train_router`)."""
        fixed = frozen_mask(params, train_router=self.train_router)
        return jax.tree_util.tree_map_with_path(lambda p, _, f: not f and self(normalise_path(p)), params, fixed)

    def validate(self, params) -> None:
        if self.kind == "mlp_layers":
            n = len(params.get("layers", ()))
            bad = [l for l in self.layers if not 0 <= l < n]
            if bad:
                raise SelectorError(f"mlp_layers{tuple(self.layers)}: layers {bad} out of range; the model has "
                                    f"layers 0..{n - 1}")
        if not any(jax.tree_util.tree_leaves(self.mask(params))):
            raise SelectorError(f"selector {self} picks no parameters; leaf paths look like "
                                f"{leaf_paths(params)[:3]} ...")

    def split(self, params):
        """(selected, rest): same structure as `params`, None where the other holds the leaf."""
        mask = self.mask(params)
        sel = jax.tree_util.tree_map(lambda x, m: x if m else None, params, mask)
        rest = jax.tree_util.tree_map(lambda x, m: None if m else x, params, mask)
        return sel, rest

    @staticmethod
    def merge(selected, rest):
        return jax.tree_util.tree_map(lambda a, b: b if a is None else a, selected, rest, is_leaf=_IS_NONE)

    def paths(self, params) -> list[tuple]:
        """Normalised paths of the selected leaves, in flatten order."""
        return [p for p, m in zip(leaf_paths(params), jax.tree_util.tree_leaves(self.mask(params))) if m]


def mlp_layers(layers, *, train_router: bool = False) -> Selector:
    """MLP parameters (every leaf of the block: w1, b1, w2, b2, factors...) of the given layers
    (an MoE block's router only with `train_router`)."""
    if isinstance(layers, int):
        layers = (layers,)
    layers = tuple(int(l) for l in layers)
    if not layers:
        raise SelectorError("mlp_layers() needs at least one layer index")
    return Selector("mlp_layers", layers=layers, train_router=train_router)


def all_mlps(*, train_router: bool = False) -> Selector:
    """Every MLP block's parameters (routers only with `train_router`)."""
    return Selector("all_mlps", train_router=train_router)


def all_params(*, train_router: bool = False) -> Selector:
    """Every parameter of the model (embeddings, attention, LayerNorms, MLPs, head; routers only
    with `train_router`)."""
    return Selector("all", train_router=train_router)


def by_path(predicate: Callable[[tuple], bool], *, train_router: bool = False) -> Selector:
    """Leaves whose normalised path (tuple of str/int) satisfies `predicate` (routers only with
    `train_router`)."""
    if not callable(predicate):
        raise SelectorError(f"by_path needs a callable on path tuples, got {type(predicate).__name__}")
    return Selector("path", predicate=predicate, train_router=train_router)


def restrict(selector: Selector, paths) -> Selector:
    """Selector of `selector`'s leaves that are also in `paths` (used for parameter blocks)."""
    return by_path(_InSet(frozenset(p for p in paths if selector(p))), train_router=selector.train_router)


@dataclasses.dataclass(frozen=True)
class _InSet:
    paths: frozenset

    def __call__(self, path):
        return path in self.paths


__all__ = ["Selector", "SelectorError", "mlp_layers", "all_mlps", "all_params", "by_path", "restrict",
           "normalise_path", "leaf_paths"]
