"""The offline default, written out: the embedded MiniLM on the shipped sentiment sample
(100 sentences, 20 % held out as dev), the full model vs fusion, prune and sketch on
layers 2-5 from D=1536 to k=384, 3 epochs at lr 3e-4. Finishes on a CPU in minutes.

    python scripts/finetune.py --recipe analysis/recipes/finetune_minilm_sentiment.py
"""


def get_config():
    return dict(model="minilm", task="sample:sentiment", methods=("fusion", "prune", "sketch"), layers="2-5",
                width=384, lrs=(3e-4,), seeds=(0,), epochs=3, batch_size=16, max_length=64)
