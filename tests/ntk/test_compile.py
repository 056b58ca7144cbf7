"""`ntkfuse.compile`: the measuring programs are compiled without GEMM autotuning unless asked,
each setting its own cached program, and the setting reaches the kernels and the CLI."""
from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np

import ntkfuse
from ntkfuse import compile as ncompile
from ntkfuse import ntk

kmod = importlib.import_module("ntkfuse.ntk.kernels")   # the module (`ntk.kernels` is the function)


def test_oneshot_jit_picks_the_program_of_the_current_setting():
    f = ncompile.oneshot_jit(lambda x: x @ x.T)
    x = jnp.arange(6.0).reshape(2, 3)
    y0 = f(x)
    assert (f.fast._cache_size(), f.tuned._cache_size()) == (1, 0)
    with ncompile.autotune(True):
        assert ncompile.autotuning()
        y1 = f(x)
        with ncompile.autotune(None):          # None keeps the enclosing setting
            f(x)
        with ncompile.autotune(False):
            f(x)
    assert not ncompile.autotuning()
    assert (f.fast._cache_size(), f.tuned._cache_size()) == (1, 1)
    np.testing.assert_array_equal(y0, y1)


def test_only_the_fast_program_is_lowered_with_the_option():
    f = ncompile.oneshot_jit(lambda x: x * 2)
    x = jnp.ones(3)
    # Private but stable enough for a test: the options a lowering hands to the compiler (and to
    # the persistent cache key).
    assert dict(f.fast.lower(x)._lowering._compiler_options_kvs) == ncompile.NO_AUTOTUNE
    assert not dict(f.tuned.lower(x)._lowering._compiler_options_kvs or ())


def test_kernels_autotune_argument_routes_to_the_tuned_program():
    cfg = ntkfuse.ModelConfig(family="bert", vocab_size=50, hidden=8, intermediate=16, num_layers=2, num_heads=2,
                              max_positions=16, num_labels=2)
    params = jax.jit(ntkfuse.init_params, static_argnums=0)(cfg, jax.random.PRNGKey(0))
    ids = np.random.default_rng(0).integers(3, 50, (3, 5)).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    opts = dict(selector=ntk.mlp_layers([1]), kinds=("ntk",), strategy="full", devices=None)
    fast0, tuned0 = kmod._kernels_explicit.fast._cache_size(), kmod._kernels_explicit.tuned._cache_size()
    k_fast = ntk.kernels(cfg, params, batch, **opts)
    assert kmod._kernels_explicit.fast._cache_size() == fast0 + 1
    k_tuned = ntk.kernels(cfg, params, batch, autotune=True, **opts)
    assert kmod._kernels_explicit.tuned._cache_size() == tuned0 + 1
    assert kmod._kernels_explicit.fast._cache_size() == fast0 + 1
    np.testing.assert_allclose(k_fast["ntk"], k_tuned["ntk"], rtol=1e-6)   # CPU: the option changes nothing


def test_compare_cli_autotune_flag_reaches_the_config():
    from ntkfuse import cli
    ns = cli._parser().parse_args(["--autotune"])
    assert ns.autotune is True
    assert cli._parser().parse_args([]).autotune is None
    from ntkfuse.experiments.compare import CompareConfig
    assert CompareConfig().autotune is False
