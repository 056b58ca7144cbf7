"""What a forward returns."""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax


class ModelOutput(NamedTuple):
    """`logits`: (B, num_labels) for a classifier, (B, T, V) for an LM, None for head="none".
    `last_hidden`: (B, T, d), the encoder/decoder output before the head.
    With `collect=True`: `hidden_states` has num_layers + 1 entries as in HF
    (embeddings, then each layer; GPT-2's last one after the final LayerNorm), and
    `mlp_inputs` / `mlp_outputs` hold each layer's MLP block input and output, (B, T, d).
    """
    logits: Optional[jax.Array]
    last_hidden: jax.Array
    hidden_states: Optional[tuple] = None
    mlp_inputs: Optional[tuple] = None
    mlp_outputs: Optional[tuple] = None
