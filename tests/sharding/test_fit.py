"""Surrogate fitting, data parallel over 8 devices, equals the one-device fit (float32 round-off)."""
from tests.sharding.run import run_on_8_devices


def test_fit_blocks_matches_one_device(tmp_path):
    run_on_8_devices(f"""
        import numpy as np
        import jax.numpy as jnp
        from ntkfuse.models.blocks import DenseMLP
        from ntkfuse.surrogate.fit import FitConfig, fit_blocks

        k = jax.random.PRNGKey(0)
        X = np.asarray(jax.random.normal(k, (2, 100, 8)))
        Y = np.tanh(X) * 0.5
        init = [DenseMLP(*(0.3 * jax.random.normal(jax.random.fold_in(k, i), s)
                           for i, s in enumerate([(16, 8), (16,), (8, 16), (8,)])))] * 2
        fc = FitConfig(steps=30, batch_size=32, lr=1e-2, warmup_steps=3, eval_every=10, patience=0,
                       checkpoint_every=10, progress=False)
        one = fit_blocks(init, X, Y, fc, "gelu", devices=None)
        many = fit_blocks(init, X, Y, fc, "gelu", checkpoint_dir="{tmp_path / 'ck'}")
        assert one.history["step"] == many.history["step"] == [10, 20, 30]
        np.testing.assert_allclose(many.history["heldout"], one.history["heldout"], rtol=1e-4)
        assert one.history["heldout"][-1][0] < one.history["heldout"][0][0]
        for a, b in zip(jax.tree.leaves(one.blocks), jax.tree.leaves(many.blocks)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
        # the result mixes with one-device arrays
        jnp.sum(many.blocks[0].w1 - one.blocks[0].w1).block_until_ready()
    """)
