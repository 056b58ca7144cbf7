"""Checks of user-facing arguments, written once and reused at every boundary
(compress, ntk_compare, surrogates, fine-tuning, the CLIs).

Each checker takes the exception class of the calling layer (`error=`), so a CLI
still reports its own error type (CompareError, CompressionError, ...) while the rule
and its message live here. All return the normalised value.
"""
from __future__ import annotations

import inspect
import re
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Type

Error = Type[Exception]


def parse_layers(spec, *, error: Error = ValueError) -> Optional[tuple]:
    """'2-5' -> (2, 3, 4, 5); '4,5,6' -> (4, 5, 6); '1-2,7' also works; ints and int
    sequences pass through; None stays None. Empty ranges and repeats are refused."""
    if spec is None:
        return None
    if isinstance(spec, bool):
        raise error(f"cannot parse layers {spec!r}: use e.g. '2-5' or '4,5,6'")
    if isinstance(spec, int):
        return (spec,)
    if not isinstance(spec, str):
        out = [int(x) for x in spec]
    else:
        out = []
        for part in spec.replace(" ", "").split(","):
            m = re.fullmatch(r"(-?\d+)(?:-(\d+))?", part)
            if not m:
                raise error(f"cannot parse layers {spec!r}: use e.g. '2-5' or '4,5,6'")
            a, b = int(m.group(1)), int(m.group(2) or m.group(1))
            if b < a:
                raise error(f"layer range {part!r} is empty (end before start)")
            out.extend(range(a, b + 1))
    if len(set(out)) != len(out):
        raise error(f"layers {spec!r} name a layer twice")
    return tuple(out)


def check_layers(layers: Iterable[int], num_layers: int, *, error: Error = ValueError) -> tuple:
    """Non-empty, unique layer indices in [0, num_layers); returned as a tuple in the given order."""
    try:
        layers = tuple(int(l) for l in layers)
    except (TypeError, ValueError):
        raise error(f"layers must be integers, got {layers!r}") from None
    if not layers:
        raise error(f"no layers given; choose from 0..{num_layers - 1}")
    if len(set(layers)) != len(layers):
        raise error(f"duplicate layers in {list(layers)}")
    bad = [l for l in layers if not 0 <= l < num_layers]
    if bad:
        raise error(f"layer{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} out of range: "
                    f"the model has layers 0..{num_layers - 1}")
    return layers


def check_width(width, full: int, *, error: Error = ValueError, what: str = "width") -> int:
    """An int in [1, full] (full = the block's hidden width D)."""
    if isinstance(width, bool) or not isinstance(width, int) and not _is_np_int(width):
        raise error(f"{what} must be an int, got {width!r}")
    if not 1 <= int(width) <= full:
        raise error(f"{what} {int(width)} out of range: must be between 1 and the MLP width D = {full}")
    return int(width)


def check_positive(name: str, value, *, error: Error = ValueError, integer: bool = False, allow_zero=False):
    """value > 0 (>= 0 with allow_zero), an int when `integer`."""
    ok_type = (isinstance(value, int) or _is_np_int(value)) if integer else isinstance(value, (int, float)) \
        or _is_np_number(value)
    if isinstance(value, bool) or not ok_type or (value < 0 if allow_zero else value <= 0):
        kind = "integer" if integer else "number"
        raise error(f"{name} must be a {'non-negative' if allow_zero else 'positive'} {kind}, got {value!r}")
    return value


def check_choice(name: str, value, choices: Sequence, *, error: Error = ValueError):
    if value not in choices:
        raise error(f"unknown {name} {value!r}; choose from {', '.join(map(str, choices))}")
    return value


def keyword_defaults(fn: Callable) -> dict:
    """{name: default} of `fn`'s keyword-only parameters: the single declaration of a
    method's options (its signature), read wherever the options are listed or checked."""
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty}


def check_options(owner: str, given: Mapping[str, Any], allowed: Mapping[str, Any], *,
                  error: Error = ValueError) -> dict:
    """`given` restricted to known names (else an error naming the valid ones), merged over the defaults."""
    bad = sorted(set(given) - set(allowed))
    if bad:
        raise error(f"unknown option{'s' if len(bad) > 1 else ''} {', '.join(bad)} for {owner}; "
                    f"valid: {', '.join(sorted(allowed)) or 'none'}")
    return {**allowed, **given}


def _is_np_int(x) -> bool:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, np.integer)


def _is_np_number(x) -> bool:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, (np.integer, np.floating))


__all__ = ["parse_layers", "check_layers", "check_width", "check_positive", "check_choice", "keyword_defaults",
           "check_options"]
