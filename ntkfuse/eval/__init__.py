"""Evaluation measures of a (compressed) model on held-out text: `perplexity` (token-weighted
sliding-window perplexity of a decoder LM)."""
from .perplexity import PerplexityError, PerplexityResult, Window, check_settings, sliding_window_nll, windows

__all__ = ["PerplexityError", "PerplexityResult", "Window", "check_settings", "sliding_window_nll", "windows"]
