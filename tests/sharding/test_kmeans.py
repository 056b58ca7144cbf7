"""Batched k-means with its layers split over 8 devices equals the one-device k-means."""
from tests.sharding.run import run_on_8_devices


def test_kmeans_batched_matches_one_device():
    run_on_8_devices("""
        import numpy as np
        from ntkfuse.compress import kmeans_batched

        rng = np.random.default_rng(0)
        Xs = rng.normal(size=(5, 40, 6)).astype(np.float32)   # 5 layers: padded to 8
        key = jax.random.PRNGKey(3)
        one = kmeans_batched(Xs, 7, key, n_init=3, max_iter=50, devices=None)
        many = kmeans_batched(Xs, 7, key, n_init=3, max_iter=50)
        for a, b, name in zip(one, many, one._fields):
            assert np.shape(a) == np.shape(b), name
            if name in ("labels", "counts", "n_iter"):
                np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=name)
            else:
                np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6, err_msg=name)
    """)

