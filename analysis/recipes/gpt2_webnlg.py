"""GPT-2 (124M) on WebNLG-style data-to-text, the paper's NLG setup (METHOD.md §5):
layers 4-11 compressed from D=3072 to k=768; the scalar output is the log-probability
of the target sentence given the linearised triples ("s | r | o ; ... ="), summed over
target tokens; sketch keeps the 256 top-scoring neurons exactly, as the reference.

    python scripts/ntk_compare.py --recipe analysis/recipes/gpt2_webnlg.py
    python scripts/ntk_compare.py --recipe analysis/recipes/gpt2_webnlg.py --data webnlg_dev.jsonl

The default data is the shipped sample (32 triple sets written for this project);
for the real WebNLG 2017 dev set convert it to JSONL lines
{"triples": [[subject, relation, object], ...], "text": reference sentence}.
Needs gpt2 from the hub or the local HF cache. Meant for a GPU.
"""


def get_config():
    return dict(
        model="gpt2",
        data="sample:webnlg",
        layers="4-11",
        width=768,
        output="target-logprob",
        reduction="sum",
        n_examples=32,
        max_length=128,
        n_init=30,
        method_options={"sketch": {"keep": 256}},
        ntk_params="compressed",
        kernel=("ntk", "sign"),
        seeds=(0, 1, 2),
    )
