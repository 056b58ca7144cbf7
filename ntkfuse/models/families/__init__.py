"""Model families behind a registry (`get_family(cfg.family)`); one module per family."""
from .registry import (FAMILIES, SUPPORTED_MODEL_TYPES, Family, UnsupportedModelError, family_for_model_type,
                       get_family)

__all__ = ["FAMILIES", "SUPPORTED_MODEL_TYPES", "Family", "UnsupportedModelError", "family_for_model_type",
           "get_family"]
