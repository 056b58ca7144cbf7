"""NTK kernels with the examples split over 8 devices equal the one-device kernels."""
from tests.sharding.run import run_on_8_devices


def test_full_strategy_matches_one_device():
    run_on_8_devices("""
        import numpy as np
        import ntkfuse
        from ntkfuse import ntk

        cfg = ntkfuse.ModelConfig(family="bert", vocab_size=30, hidden=8, intermediate=12, num_layers=2,
                                  num_heads=2, max_positions=16)
        params = ntkfuse.init_params(cfg, jax.random.PRNGKey(0))
        params = {**params, "layers": jax.tree_util.tree_map(lambda a: a * 20, params["layers"])}
        rng = np.random.default_rng(0)
        def batch(n):   # n not a multiple of 8: padded rows must be dropped
            ids = rng.integers(3, 30, (n, 6)).astype(np.int32)
            mask = np.ones_like(ids); mask[1, 4:] = 0
            return {"input_ids": ids, "attention_mask": mask}
        b1, b2 = batch(11), batch(5)
        kinds = ("ntk", "sign", "sign_sym")
        for kw in (dict(), dict(batch2=b2), dict(chunk=1)):
            one, plan1 = ntk.kernels(cfg, params, b1, kinds=kinds, strategy="full", devices=None,
                                     return_plan=True, **kw)
            many, plan8 = ntk.kernels(cfg, params, b1, kinds=kinds, strategy="full", devices="auto",
                                      return_plan=True, **kw)
            assert plan1 == plan8
            for k in kinds:
                a, b = np.asarray(one[k]), np.asarray(many[k])
                assert a.shape == b.shape == (11, 5 if "batch2" in kw else 11)
                assert np.abs(a).max() > 1e-3, k
                np.testing.assert_allclose(b, a, rtol=2e-5, atol=1e-6 * np.abs(a).max(), err_msg=f"{k} {kw}")
        # a mesh-computed kernel mixes with one-device arrays
        assert float(jax.numpy.sum(many["ntk"] - one["ntk"])) == float(np.sum(np.asarray(many["ntk"]) - np.asarray(one["ntk"])))
    """)


_SETUP = """
    import numpy as np
    import ntkfuse
    from ntkfuse import ntk

    cfg = ntkfuse.ModelConfig(family="bert", vocab_size=30, hidden=8, intermediate=12, num_layers=2,
                              num_heads=2, max_positions=16)
    params = ntkfuse.init_params(cfg, jax.random.PRNGKey(0))
    params = {**params, "layers": jax.tree_util.tree_map(lambda a: a * 20, params["layers"])}
    rng = np.random.default_rng(0)
    def batch(n):   # n not a multiple of 8 (5 < 8 devices): padded rows must be dropped
        ids = rng.integers(3, 30, (n, 6)).astype(np.int32)
        mask = np.ones_like(ids); mask[1, 4:] = 0
        return {"input_ids": ids, "attention_mask": mask}
    b1, b2 = batch(11), batch(5)
    kinds = ("ntk", "sign", "sign_sym")

    def check(strategy, variants, **common):
        for kw in variants:
            one, plan1 = ntk.kernels(cfg, params, b1, kinds=kinds, strategy=strategy, devices=None,
                                     return_plan=True, **common, **kw)
            many, plan8 = ntk.kernels(cfg, params, b1, kinds=kinds, strategy=strategy, devices="auto",
                                      return_plan=True, **common, **kw)
            assert plan1 == plan8 and plan1.strategy == strategy
            for k in kinds:
                a, b = np.asarray(one[k]), np.asarray(many[k])
                assert a.shape == b.shape == (11, 5 if "batch2" in kw else 11)
                assert np.abs(a).max() > 1e-3, k
                np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * np.abs(a).max(), err_msg=f"{k} {kw}")
                print(strategy, sorted(kw), k, "max|diff|", np.abs(b - a).max(), "max|K|", np.abs(a).max())
            yield plan1
"""


def test_blocks_strategy_matches_one_device():
    print(run_on_8_devices(_SETUP + """
    # 212 params per layer's MLP: two blocks, each an explicit-gradient kernel with its examples split
    plans = list(check("blocks", (dict(), dict(batch2=b2)), param_block=212))
    assert all(len(p.blocks) == 2 for p in plans)
    """))


def test_layers_strategy_matches_one_device():
    print(run_on_8_devices(_SETUP + """
    # a tiny budget: examples one per chunk and the hidden width in D-chunks (6 of 2); bf16x3 split Gram
    variants = (dict(), dict(batch2=b2), dict(memory_budget_bytes=21500, gram_precision="bf16x3"))
    plans = list(check("layers", variants))
    assert plans[-1].d_chunks == (6, 6) and plans[-1].chunk == 1, plans[-1]
    """))


def test_fused_block_matches_one_device():
    """A fusion block (counts a fixed leaf, replicated with the params) under the sharded "full" and
    "layers" strategies: the same kernels as one device."""
    print(run_on_8_devices(_SETUP + """
    from ntkfuse.models import FusedMLP
    m = ntkfuse.get_mlp(params, 1)
    params = ntkfuse.replace_mlps(params, {1: FusedMLP(m.w1[:6], m.b1[:6], m.w2[:, :6] / 2, m.b2, (1, 2, 3, 1, 2, 3))})
    assert ntk.all_mlps().split(params)[1]["layers"][1]["mlp"].counts is not None   # never selected
    for strategy in ("full", "layers"):
        list(check(strategy, (dict(), dict(batch2=b2))))
    """))
