"""Argument checks in one style: each raises a ``ValueError`` naming the owner, the argument and the value.

Library constructors call these so that a bad value fails at construction with one clear line (the CLI turns
such errors into exit code 2). ``bool`` is never accepted where a number is asked for.
"""

from __future__ import annotations

import math
from typing import Any, Optional

__all__ = ["is_int", "is_number", "check_int", "check_number", "check_bool", "check_fraction"]


def is_int(value: Any) -> bool:
    """True for an ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for a finite ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_int(owner: str, name: str, value: Any, minimum: int, optional: bool = False) -> Optional[int]:
    """Return ``value`` if it is an integer >= ``minimum`` (or ``None`` when ``optional``), else raise."""
    if value is None and optional:
        return None
    if not is_int(value) or value < minimum:
        extra = " or null" if optional else ""
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}{extra}, got {value!r}.")
    return value


def check_number(owner: str, name: str, value: Any, minimum: float = 0.0, strict: bool = False,
                 optional: bool = False, maximum: Optional[float] = None) -> Optional[float]:
    """Return ``value`` as a float if it is finite and within bounds (or ``None`` when ``optional``), else raise.

    Args:
        minimum: lower bound, inclusive unless ``strict``.
        strict: exclude ``minimum`` (and ``maximum``) themselves.
        optional: accept ``None`` (returned as is).
        maximum: upper bound, if any.
    """
    if value is None and optional:
        return None
    ok = is_number(value) and (value > minimum if strict else value >= minimum)
    if ok and maximum is not None:
        ok = value < maximum if strict else value <= maximum
    if not ok:
        op = ">" if strict else ">="
        bound = f"{op} {minimum}"
        if maximum is not None:
            bound += f" and {'<' if strict else '<='} {maximum}"
        extra = " or null to disable it" if optional else ""
        raise ValueError(f"{owner}: {name} must be a finite number {bound}{extra}, got {value!r}.")
    return float(value)


def check_fraction(owner: str, name: str, value: Any) -> float:
    """Return ``value`` if it lies strictly between 0 and 1, else raise."""
    return check_number(owner, name, value, minimum=0.0, maximum=1.0, strict=True)


def check_bool(owner: str, name: str, value: Any) -> bool:
    """Return ``value`` if it is a ``bool``, else raise."""
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be true or false, got {value!r}.")
    return value
