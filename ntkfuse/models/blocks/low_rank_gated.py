"""LowRankGatedMLP (svd of a GatedMLP, docs/gated.md): each of the three matrices replaced by
two trainable factors, W_gate ≈ U_g V_g, W_up ≈ U_u V_u, W_down ≈ U_d V_d:

    y = U_d V_d (σ(U_g V_g x) ⊙ (U_u V_u x))

The width D of the gating product is kept; only the matrices are factorised. Like
`LowRankMLP` it is not a bundle of sub-MLPs (no `neuron_view`, no `token_grads`): the NTK
uses its explicit-gradient strategies, and the one-shot methods do not compress it again.
"""
from __future__ import annotations

from typing import Callable

import jax

from .base import Block, block_kind, lin

Array = jax.Array


@block_kind
class LowRankGatedMLP(Block):
    u_gate: Array             # (D, r)
    v_gate: Array             # (r, d)
    u_up: Array               # (D, r)
    v_up: Array               # (r, d)
    u_down: Array             # (d, r)
    v_down: Array             # (r, D)

    kind = "low_rank_gated"

    @property
    def width(self) -> int:
        return self.u_gate.shape[0]

    @property
    def rank(self) -> int:
        """The rank of the gate factors (svd gives all three matrices the same rank)."""
        return self.v_gate.shape[0]

    def __call__(self, x: Array, act: Callable) -> Array:
        g = lin(lin(x, self.v_gate, None), self.u_gate, None)
        u = lin(lin(x, self.v_up, None), self.u_up, None)
        return lin(lin(act(g) * u, self.v_down, None), self.u_down, None)

    def flops_per_token(self) -> int:
        D, rg = self.u_gate.shape
        ru, rd = self.v_up.shape[0], self.v_down.shape[0]
        d_in, d_out = self.v_gate.shape[1], self.u_down.shape[0]
        # gate and up: x → r → D each; down: D → r → d; plus σ and the gating product (D each)
        return 2 * (rg * d_in + D * rg) + 2 * (ru * d_in + D * ru) + 2 * (rd * D + d_out * rd) + 2 * D


__all__ = ["LowRankGatedMLP"]
