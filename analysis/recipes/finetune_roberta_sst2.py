"""RoBERTa-base fine-tuned on SST-2, the paper's GLUE table (METHOD.md §5): full model vs
fusion and the baselines on layers 4-11 compressed from D=3072 to k=768; 10 epochs,
batch 32, AdamW (0.9, 0.98), eps 1e-6, weight decay 0.1, linear decay after 6 % warm-up,
lr grid {1e-5, 2e-5, 4e-5, 6e-5, 8e-5}, best dev epoch reported (paper: 94.61 full,
93.23 fusion).

    python scripts/finetune.py --recipe analysis/recipes/finetune_roberta_sst2.py

Needs the hub (roberta-base, `pip install datasets` for glue/sst2) and a GPU. Other GLUE
tasks: add --task glue/<cola|mrpc|stsb|qqp|mnli|qnli|rte> (STS-B is a regression with a
one-output head). --tune-epochs 1 adds the paper's layer-wise task tuning first.
"""


def get_config():
    return dict(
        model="roberta-base",
        task="glue/sst2",
        methods=("fusion", "cluster", "sketch", "prune", "svd"),
        layers="4-11",
        width=768,
        lrs=(1e-5, 2e-5, 4e-5, 6e-5, 8e-5),
        seeds=(0,),
        epochs=10,
        batch_size=32,
        max_length=128,
        weight_decay=0.1,
        warmup=0.06,
        n_init=30,
    )
