"""Argument checks shared by the loader and the splitter, with messages that name the argument."""

from __future__ import annotations

import numpy as np

__all__ = ["require_int"]


def require_int(value: object, *, name: str, minimum: int) -> int:
    """Return ``value`` as an int if it is an integer (not a bool) of at least ``minimum``.

    Raises:
        TypeError: ``value`` is not an integer; the message names ``name`` and the type seen.
        ValueError: ``value`` is below ``minimum``; the message names ``name`` and the value seen.
    """
    # bool is an int subclass, but passing True as a batch size or seed is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)
