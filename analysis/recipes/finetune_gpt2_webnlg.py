"""GPT-2 (124M) fine-tuned on WebNLG 2017, the paper's data-to-text table (METHOD.md §5):
layers 4-11 from D=3072 to k=768; 10 epochs, batch 8, lr 2e-5, AdamW weight decay 0.1,
6 % warm-up, gradient clipping 1.0, loss on the target tokens only; dev loss picks the
best epoch and greedy decoding (<= 40 new tokens) gives BLEU, METEOR and TER.

    python scripts/finetune.py --recipe analysis/recipes/finetune_gpt2_webnlg.py

Needs the hub (gpt2 and the `web_nlg` data set through `datasets`) and a GPU. Offline,
`--task sample:webnlg` runs the same recipe on the shipped 32 examples (20 % held out).
"""


def get_config():
    return dict(
        model="gpt2",
        task="webnlg",
        methods=("fusion", "cluster", "sketch", "prune", "svd"),
        layers="4-11",
        width=768,
        lrs=(2e-5,),
        seeds=(0,),
        epochs=10,
        batch_size=8,
        max_length=128,
        weight_decay=0.1,
        warmup=0.06,
        clip=1.0,
        n_init=30,
        max_new_tokens=40,
    )
