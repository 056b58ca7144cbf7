"""Batched k-means with its layers split over 8 devices equals the one-device k-means."""
from tests.sharding.run import run_on_8_devices


def test_kmeans_batched_matches_one_device():
    run_on_8_devices("""
        import numpy as np
        from ntkfuse.compress import kmeans_batched
        from tests.sharding.run import assert_same_kmeans

        rng = np.random.default_rng(0)
        Xs = rng.normal(size=(5, 40, 6)).astype(np.float32)   # 5 layers: padded to 8
        key = jax.random.PRNGKey(3)
        one = kmeans_batched(Xs, 7, key, n_init=3, max_iter=50, devices=None)
        many = kmeans_batched(Xs, 7, key, n_init=3, max_iter=50)
        assert_same_kmeans(one, many)
    """)



def test_kmeans_restarts_split_matches_one_device():
    print(run_on_8_devices("""
        import numpy as np
        from ntkfuse.compress import kmeans_batched
        from tests.sharding.run import assert_same_kmeans
        from ntkfuse.compress.kmeans import _prepare, _restarts, split_restarts

        rng = np.random.default_rng(1)
        key = jax.random.PRNGKey(5)
        for n_init in (8, 5):    # one restart per device; 5 padded to 8 (copies masked)
            assert split_restarts(1, n_init, 8)
            Xs = rng.normal(size=(1, 60, 6)).astype(np.float32)
            one = kmeans_batched(Xs, 7, key, n_init=n_init, max_iter=50, devices=None)
            many = kmeans_batched(Xs, 7, key, n_init=n_init, max_iter=50)
            assert_same_kmeans(one, many)
            # the same per-restart keys: the winner is the lowest of the one-device restarts' inertias,
            # and it is not restart 0 (so the choice crossed devices)
            keys = jax.random.split(jax.random.split(key, 1)[0], n_init)
            _, Xc, sq, P, tol_abs = _prepare(jax.numpy.asarray(Xs[0]), 1e-4)
            inertias = np.asarray(_restarts(Xc, sq, P, tol_abs, keys, 7, 50)[3])
            assert int(np.argmin(inertias)) > 0, inertias
            np.testing.assert_allclose(float(many.inertia[0]), inertias.min(), rtol=1e-6)
            print(n_init, "winner", int(np.argmin(inertias)), "inertias", inertias,
                  "max|diff| centroids", np.abs(np.asarray(many.centroids) - np.asarray(one.centroids)).max(),
                  "inertia", abs(float(many.inertia[0]) - float(one.inertia[0])))
    """))


def test_kmeans_split_choice():
    from ntkfuse.compress.kmeans import split_restarts
    assert split_restarts(1, 30, 8) and split_restarts(2, 30, 8) and split_restarts(3, 30, 8)
    assert not split_restarts(5, 3, 8) and not split_restarts(8, 30, 8) and not split_restarts(16, 30, 8)
