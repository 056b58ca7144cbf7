"""RoBERTa-base on SST-2 validation, the paper's GLUE setup (METHOD.md §5): layers 4-11
compressed from D=3072 to k=768, kernel of softmax(logits)[0] on a classifier head
initialised from a fixed seed, k-means with the reference's 30 restarts.

    python scripts/ntk_compare.py --recipe analysis/recipes/roberta_sst2.py

Needs the hub (or the local HF cache) for roberta-base and `pip install datasets` for
glue/sst2; offline, pass --data with a local TSV (sentence<TAB>label), e.g.
--data sample:sentiment. Meant for a GPU; on a CPU add --n-examples 16 --n-init 3.
"""


def get_config():
    return dict(
        model="roberta-base",
        data="glue/sst2:validation",
        layers="4-11",
        width=768,
        output="class-prob",
        class_index=0,
        n_examples=128,
        max_length=128,
        n_init=30,
        ntk_params="compressed",
        kernel=("ntk", "sign"),
        seeds=(0, 1, 2),
    )
