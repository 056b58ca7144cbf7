"""Model configuration: one frozen, hashable dataclass for every supported family.

Hashable so it can be a static argument of `jax.jit`; built from a Hugging Face
config with `ModelConfig.from_hf_config`, which hands the family-specific reading to
the family registered for the config's `model_type`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Union

from .families.registry import (SUPPORTED_MODEL_TYPES, UnsupportedModelError, family_for_model_type,  # noqa: F401
                                get_family)

HEADS = ("classifier", "lm", "none")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and options of a transformer; `family` names its entry in the family registry.

    `head` is "classifier" (sequence classification: dense+tanh on the first token,
    then a projection to `num_labels`), "lm" (GPT-2 tied LM head) or "none"
    (final hidden states are the output).
    """

    family: str                  # a key of ntkfuse.models.families.FAMILIES
    vocab_size: int
    hidden: int                  # d
    intermediate: int            # D (MLP hidden width)
    num_layers: int
    num_heads: int
    max_positions: int
    activation: str = "gelu"     # "gelu" | "gelu_tanh" | "relu" | "silu"
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2
    pad_token_id: int = 0
    num_labels: int = 2
    head: str = "classifier"
    # Seed of the classifier head when the checkpoint has none (the reference
    # measures NTKs on a randomly initialised head with a fixed seed).
    head_seed: int = 0
    # Free-form provenance, not used by the maths.
    name: str = ""
    # Layer stack (models/stack.py): lax.scan over runs of identical layers, and
    # rematerialisation of each layer in the backward pass. Same numbers either way.
    scan_layers: bool = False
    remat: Union[bool, str] = False             # False | True (store layer inputs) | "dots" (and matmul outputs)
    # Dropout rates at HF's places, applied only when forward gets an `rng` key.
    dropout: float = 0.0                         # hidden/residual (HF hidden_dropout_prob, resid_pdrop)
    attention_dropout: float = 0.0               # attention probabilities
    embed_dropout: Optional[float] = None        # embeddings output; None: `dropout` (GPT-2: embd_pdrop)
    classifier_dropout: Optional[float] = None   # classifier head; None: `dropout` (HF classifier_dropout)
    # Llama-style decoders (families/llama.py); `layer_norm_eps` is their RMSNorm eps.
    num_kv_heads: Optional[int] = None           # grouped-query attention; None: num_heads
    rope_theta: float = 10000.0
    rope_scaling: Optional[tuple] = None         # ((key, value), ...) pairs, rope_type first
    tie_word_embeddings: bool = True             # LM head = word embeddings (GPT-2 always)
    qkv_bias: bool = False                       # q/k/v projections have biases (Qwen2)
    out_bias: bool = False                       # the attention output projection has a bias
    sliding_window: Optional[int] = None         # Mistral: a query sees the last `sliding_window` keys
    # Sparse Mixture-of-Experts MLPs (families/mixtral.py, blocks/moe.py)
    num_experts: Optional[int] = None            # experts per MoE layer (HF num_local_experts)
    experts_per_token: Optional[int] = None      # top-k routing (HF num_experts_per_tok)
    # Encoder-decoders (families/switch.py). `num_layers` counts both stacks: params["layers"] holds
    # the encoder's `encoder_layers` layers first, then the decoder's, so MLP "layer i" is one index.
    encoder_layers: Optional[int] = None         # None: not an encoder-decoder
    sparse_layers: tuple = ()                    # (global) indices of the layers whose MLP is an MoEMLP
    expert_capacity: Optional[int] = None        # Switch: tokens per expert per sequence (HF expert_capacity)
    relative_attention_num_buckets: int = 32     # T5-style relative position buckets
    relative_attention_max_distance: int = 128
    decoder_start_token_id: int = 0              # first decoder input (HF shift_right)

    def __post_init__(self):
        fam = get_family(self.family)
        if self.rope_scaling is not None:   # hashable again after a JSON round trip (lists)
            object.__setattr__(self, "rope_scaling", tuple(tuple(kv) for kv in self.rope_scaling))
        object.__setattr__(self, "sparse_layers", tuple(int(i) for i in self.sparse_layers))
        if self.encoder_layers is not None and not 0 < self.encoder_layers < self.num_layers:
            raise ValueError(f"encoder_layers must be in [1, num_layers={self.num_layers}), got {self.encoder_layers}")
        if self.num_kv_heads is not None and (self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads):
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.num_experts is not None and not 1 <= (self.experts_per_token or 0) <= self.num_experts:
            raise ValueError(f"experts_per_token must be in [1, num_experts={self.num_experts}], "
                             f"got {self.experts_per_token}")
        if self.hidden % self.num_heads:
            raise ValueError(f"hidden size {self.hidden} is not divisible by num_heads {self.num_heads}")
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; expected {', '.join(HEADS[:-1])} or {HEADS[-1]}")
        if self.head not in fam.heads:
            raise ValueError(f"head {self.head!r} is not available for family {self.family!r}")
        if self.remat not in (False, True, "dots"):
            raise ValueError(f"remat must be False, True or 'dots', got {self.remat!r}")
        for name in ("dropout", "attention_dropout", "embed_dropout", "classifier_dropout"):
            rate = getattr(self, name)
            if rate is not None and not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {rate}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def is_decoder(self) -> bool:
        return get_family(self.family).is_decoder

    @property
    def is_encoder_decoder(self) -> bool:
        return self.encoder_layers is not None

    def hidden_state_index(self, layer: int) -> int:
        """Index in `ModelOutput.hidden_states` of layer `layer`'s output: layer + 1, and for an
        encoder-decoder layer + 2 in the decoder (its hidden states follow the encoder's
        encoder_layers + 1, and start with the decoder's embeddings)."""
        if self.is_encoder_decoder and layer >= self.encoder_layers:
            return layer + 2
        return layer + 1

    def num_hidden_states(self) -> int:
        return self.num_layers + (2 if self.is_encoder_decoder else 1)

    def mask_key(self, hidden_state: Optional[int] = None) -> str:
        """The batch key of the padding mask of hidden state `hidden_state` (None: the logits):
        an encoder-decoder's decoder side uses `decoder_attention_mask`."""
        if not self.is_encoder_decoder or (hidden_state is not None and hidden_state <= self.encoder_layers):
            return "attention_mask"
        return "decoder_attention_mask"

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_hf_config(cls, hf: Any, *, head: str | None = None, num_labels: int | None = None,
                       name: str = "") -> "ModelConfig":
        """Build from a `transformers` config object or its dict (`config.json`)."""
        d = hf if isinstance(hf, Mapping) else hf.to_dict()
        fam = family_for_model_type(d.get("model_type"))
        return cls(**fam.config_from_hf(d, head=head, num_labels=num_labels, name=name))
