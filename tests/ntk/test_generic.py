"""The function-level empirical-NTK API (`ntk.empirical_ntk_fn`) against float64 brute force,
and against the transformer engine on a transformer."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkfuse
from ntkfuse import ntk
from ntkfuse.models import ModelConfig

N, DIN, H, C = 5, 3, 7, 4


def _mlp():
    rng = np.random.default_rng(0)
    p = {"w1": jnp.asarray(rng.normal(size=(DIN, H)), jnp.float32), "b1": jnp.asarray(rng.normal(size=H), jnp.float32),
         "w2": jnp.asarray(rng.normal(size=(H, C)) / 3, jnp.float32)}
    f = lambda p, x: jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]   # noqa: E731  batch-independent, outputs (N, C)
    x = jnp.asarray(rng.normal(size=(N, DIN)), jnp.float32)
    return f, p, x


def _jacobian64(f, p, x):
    """(N, C, P) float64 Jacobian of every output w.r.t. every parameter."""
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a, np.float64)), p)
        jac = jax.jacrev(f)(p64, jnp.asarray(np.asarray(x, np.float64)))
        return np.concatenate([np.asarray(l).reshape(N, C, -1) for l in jax.tree_util.tree_leaves(jac)], axis=-1)


OPS = {"ntk": (lambda a: a, lambda b: b), "sign": (lambda a: a, np.sign), "sign_sym": (np.sign, np.sign)}


@pytest.mark.parametrize("kind", ["ntk", "sign", "sign_sym"])
@pytest.mark.parametrize("axes,spec", [(((-1,), ()), "icp,jcp->ij"), (((), ()), "icp,jdp->ijcd"),
                                       (((), (-1,)), "icp,jcp->ijc")])
def test_matches_float64_jacobian(kind, axes, spec):
    f, p, x = _mlp()
    J = _jacobian64(f, p, x)
    opa, opb = OPS[kind]
    want = np.einsum(spec, opa(J), opb(J))
    got = np.asarray(ntk.empirical_ntk_fn(f, trace_axes=axes[0], diagonal_axes=axes[1], kind=kind)(x, None, p))
    assert got.shape == want.shape
    # sign of a float32 gradient can differ from float64's only where it is ~0: compare relative to the scale
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("vmap_axes,chunk", [(None, None), (0, 2), (0, None)])
def test_batched_chunked_and_cross_kernels_agree(vmap_axes, chunk):
    f, p, x = _mlp()
    ref = np.asarray(ntk.empirical_ntk_fn(f)(x, None, p))
    got = np.asarray(ntk.empirical_ntk_fn(f, vmap_axes=vmap_axes, chunk=chunk)(x, None, p))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    cross = np.asarray(ntk.empirical_ntk_fn(f, vmap_axes=vmap_axes, chunk=chunk)(x[:2], x[2:], p))
    np.testing.assert_allclose(cross, ref[:2, 2:], rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    f, p, x = _mlp()
    with pytest.raises(ntk.NTKConfigError, match="unknown kind"):
        ntk.empirical_ntk_fn(f, kind="adam")
    with pytest.raises(ntk.NTKConfigError, match="vmap_axes"):
        ntk.empirical_ntk_fn(f, vmap_axes=1)
    with pytest.raises(ntk.NTKConfigError, match="both traced and diagonal"):
        ntk.empirical_ntk_fn(f, trace_axes=(-1,), diagonal_axes=(-1,))
    with pytest.raises(ntk.NTKConfigError, match="out of range"):
        ntk.empirical_ntk_fn(f, trace_axes=(3,))(x, None, p)


@pytest.mark.parametrize("kind", ["ntk", "sign"])
def test_equals_transformer_engine_on_a_transformer(kind):
    """The generic API on f(selected MLP params, batch) = softmax(logits)[0] gives the engine's kernels."""
    cfg = ModelConfig(family="bert", vocab_size=40, hidden=16, intermediate=24, num_layers=2, num_heads=2,
                      max_positions=16, num_labels=2)
    params = ntkfuse.init_params(cfg, jax.random.PRNGKey(0))
    params = jax.tree_util.tree_map(lambda a: a * 20 if a.ndim == 2 and a.shape[0] > 2 else a, params)
    rng = np.random.default_rng(1)
    batch = {"input_ids": rng.integers(3, 40, (4, 6)).astype(np.int32), "attention_mask": np.ones((4, 6), np.int32)}
    batch["attention_mask"][0, 4:] = 0
    sel = ntk.mlp_layers([1])
    s, rest = sel.split(params)
    out = ntk.class_prob(0)

    def f(s, b):
        return jax.vmap(lambda ex: out(cfg, ntk.Selector.merge(s, rest), ex))(b)

    got = np.asarray(ntk.empirical_ntk_fn(f, trace_axes=(), kind=kind)(batch, None, s))
    want = np.asarray(ntk.kernels(cfg, params, batch, selector=sel, kinds=(kind,), output=out)[kind])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
