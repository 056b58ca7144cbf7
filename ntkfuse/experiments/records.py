"""Versions and timestamps stored with results, so a number can be traced to its code."""
from __future__ import annotations

import datetime as _dt
import platform


def versions(**extra) -> dict:
    """{ntkfuse, jax, numpy, python} versions, plus `extra` (e.g. torch=torch.__version__)."""
    import jax
    import numpy as np

    from .. import __version__
    return {"ntkfuse": __version__, "jax": jax.__version__, "numpy": np.__version__,
            "python": platform.python_version(), **extra}


def timestamp() -> str:
    """Now in UTC, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


__all__ = ["versions", "timestamp"]
