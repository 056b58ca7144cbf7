"""Fine-tuning, data parallel over 8 devices, equals the one-device run (float32 round-off)."""
from tests.sharding.run import run_on_8_devices


def test_finetune_matches_one_device():
    run_on_8_devices("""
        import numpy as np
        from ntkfuse.finetune import TrainConfig, finetune, get_task, split_dev
        from tests.finetune.helpers import WordTok, sentiment, tiny

        cfg, p = tiny()
        train, dev = split_dev(sentiment(24), 0.25)
        tc = TrainConfig(lr=2e-2, epochs=1, batch_size=8, max_length=16, eval_batch_size=8, weight_decay=0.1)
        task = get_task("sample:sentiment")
        one = finetune(cfg, p, WordTok(), train, dev, task, tc, devices=None)
        many = finetune(cfg, p, WordTok(), train, dev, task, tc)
        for a, b in zip(one["history"], many["history"]):
            for k in ("train_loss", task.metric):
                np.testing.assert_allclose(b[k], a[k], rtol=1e-4, err_msg=k)
        for a, b in zip(jax.tree.leaves(one["params"]), jax.tree.leaves(many["params"])):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-4, atol=2e-5)
    """)
