"""Model configuration: one frozen, hashable dataclass for every supported family.

Hashable so it can be a static argument of `jax.jit`; built from a Hugging Face
config with `ModelConfig.from_hf_config`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "gpt2")

# HF activation names -> ntkfuse activation names (see models/layers.py).
_ACTIVATIONS = {
    "gelu": "gelu",            # exact (erf) GELU: BERT, RoBERTa
    "gelu_new": "gelu_tanh",   # tanh approximation: GPT-2
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
}


class UnsupportedModelError(ValueError):
    """The checkpoint's `model_type` is not one ntkfuse implements."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and options of a transformer; `family` picks the forward function.

    `head` is "classifier" (sequence classification: dense+tanh on the first token,
    then a projection to `num_labels`), "lm" (GPT-2 tied LM head) or "none"
    (final hidden states are the output).
    """

    family: str                  # "bert" | "roberta" | "gpt2"
    vocab_size: int
    hidden: int                  # d
    intermediate: int            # D (MLP hidden width)
    num_layers: int
    num_heads: int
    max_positions: int
    activation: str = "gelu"     # "gelu" | "gelu_tanh" | "relu"
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

    def __post_init__(self):
        if self.family not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"unsupported model family {self.family!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        if self.hidden % self.num_heads:
            raise ValueError(f"hidden size {self.hidden} is not divisible by num_heads {self.num_heads}")
        if self.head not in ("classifier", "lm", "none"):
            raise ValueError(f"unknown head {self.head!r}; expected classifier, lm or none")
        if (self.head == "lm") != (self.family == "gpt2") and self.head != "none":
            raise ValueError(f"head {self.head!r} is not available for family {self.family!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.num_heads

    @property
    def is_decoder(self) -> bool:
        return self.family == "gpt2"

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
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"unsupported model_type {model_type!r}; ntkfuse supports: {', '.join(SUPPORTED_MODEL_TYPES)}")
        if num_labels is None:
            num_labels = len(d["id2label"]) if d.get("id2label") else d.get("num_labels", 2)
        if model_type == "gpt2":
            act = d.get("activation_function", "gelu_new")
            if act not in _ACTIVATIONS:
                raise UnsupportedModelError(f"unsupported activation {act!r}")
            inner = d.get("n_inner") or 4 * d["n_embd"]
            return cls(family="gpt2", vocab_size=d["vocab_size"], hidden=d["n_embd"], intermediate=inner,
                       num_layers=d["n_layer"], num_heads=d["n_head"], max_positions=d["n_positions"],
                       activation=_ACTIVATIONS[act], layer_norm_eps=d.get("layer_norm_epsilon", 1e-5),
                       type_vocab_size=0, pad_token_id=d.get("pad_token_id") or 0,
                       num_labels=num_labels, head=head or "lm", name=name)
        act = d.get("hidden_act", "gelu")
        if act not in _ACTIVATIONS:
            raise UnsupportedModelError(f"unsupported activation {act!r}")
        pad = d.get("pad_token_id")
        if pad is None:
            pad = 1 if model_type == "roberta" else 0
        head = head or "classifier"
        return cls(family=model_type, vocab_size=d["vocab_size"], hidden=d["hidden_size"],
                   intermediate=d["intermediate_size"], num_layers=d["num_hidden_layers"],
                   num_heads=d["num_attention_heads"], max_positions=d["max_position_embeddings"],
                   activation=_ACTIVATIONS[act], layer_norm_eps=d.get("layer_norm_eps", 1e-12),
                   type_vocab_size=d.get("type_vocab_size", 2), pad_token_id=pad,
                   num_labels=num_labels, head=head, name=name)
