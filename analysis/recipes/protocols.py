"""Both protocols in one command, rendered side by side (issue 11): the reference's own
setup (layer 0 compressed, kernel w.r.t. layer 0's MLP) and the multi-layer setup (the
last two thirds of the layers), each with every method over seeds 0,1,2.

    python scripts/ntk_compare.py --recipe analysis/recipes/protocols.py
    python scripts/ntk_compare.py --recipe analysis/recipes/protocols.py --model roberta-base --data glue/sst2

Writes <out>/reference/ and <out>/multi-layer/ (each a resumable result directory) and
<out>/protocols.md, <out>/protocols.png (side by side, one-std error bars).
"""


def get_config():
    return dict(
        protocols="reference,multi-layer",
        seeds=(0, 1, 2),
    )
