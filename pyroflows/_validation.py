"""Argument checks shared by ``fit``, the diagnostics and the export.

Each check raises a ``ValueError`` (``TypeError`` for a value of the wrong kind) that names the
argument, the accepted range and the value it got, so that a setting that would do nothing or
the wrong thing fails before any work is done.

Example:
    >>> check_count("steps", 100)
    100
    >>> check_count("steps", 2.5)
    Traceback (most recent call last):
    ...
    TypeError: steps must be a whole number >= 1, got 2.5 (float)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np
import torch

__all__ = [
    "NonFiniteDataError",
    "check_count",
    "check_flag",
    "check_positive",
    "check_unit_interval",
    "describe_nonfinite_arguments",
]


class NonFiniteDataError(ValueError):
    """A model argument holds NaN or infinite values that make the log density non-finite."""


def check_count(name: str, value: object, *, minimum: int = 1, why: str = "") -> int:
    """``value`` as an ``int`` if it is a whole number (not a bool, not a float) >= ``minimum``."""
    accepted = f"{name} must be a whole number >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{accepted}, got {value!r} ({type(value).__name__}){why}")
    if value < minimum:
        raise ValueError(f"{accepted}, got {value}{why}")
    return int(value)


def check_positive(name: str, value: object, *, allow_inf: bool = False, why: str = "") -> float:
    """``value`` as a ``float`` if it is a real number > 0 (finite unless ``allow_inf``)."""
    upper = "∞]" if allow_inf else "∞)"
    accepted = f"{name} must be a number in (0, {upper}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{accepted}, got {value!r} ({type(value).__name__}){why}")
    number = float(value)
    if math.isnan(number) or number <= 0 or (math.isinf(number) and not allow_inf):
        raise ValueError(f"{accepted}, got {value}{why}")
    return number


def check_unit_interval(name: str, value: object, *, why: str = "") -> float:
    """``value`` as a ``float`` if it lies in (0, 1]."""
    accepted = f"{name} must be a number in (0, 1]"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{accepted}, got {value!r} ({type(value).__name__}){why}")
    number = float(value)
    if not 0 < number <= 1:
        raise ValueError(f"{accepted}, got {value}{why}")
    return number


def check_flag(name: str, value: object) -> bool:
    """``value`` if it is a bool."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def _nonfinite_count(value: object) -> tuple[int, int, int] | None:
    """(NaN count, +inf count, -inf count) of a floating tensor or array, else None."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point() or value.numel() == 0:
            return None
        tensor = value.detach()
        return (
            int(torch.isnan(tensor).sum()),
            int(torch.isposinf(tensor).sum()),
            int(torch.isneginf(tensor).sum()),
        )
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
        return (
            int(np.isnan(value).sum()),
            int(np.isposinf(value).sum()),
            int(np.isneginf(value).sum()),
        )
    return None


def describe_nonfinite_arguments(args: tuple, kwargs: Mapping[str, object]) -> list[str]:
    """One line per model argument (tensor or array, also inside a list, tuple or dict) that holds
    NaN or infinite values, e.g. ``"argument 0 (Tensor(20,)): 2 NaN"``; empty when all are
    finite."""
    problems = []

    def visit(label: str, value: object, depth: int = 0) -> None:
        counts = _nonfinite_count(value)
        if counts is not None:
            nan, pos, neg = counts
            if nan or pos or neg:
                parts = [
                    f"{n} {what}" for n, what in ((nan, "NaN"), (pos, "+inf"), (neg, "-inf")) if n
                ]
                shape = tuple(value.shape)
                problems.append(f"{label} ({type(value).__name__}{shape}): {', '.join(parts)}")
            return
        if depth < 2 and isinstance(value, list | tuple):
            for index, item in enumerate(value):
                visit(f"{label}[{index}]", item, depth + 1)
        elif depth < 2 and isinstance(value, Mapping):
            for key, item in value.items():
                visit(f"{label}[{key!r}]", item, depth + 1)

    for index, value in enumerate(args):
        visit(f"argument {index}", value)
    for key, value in kwargs.items():
        visit(f"argument {key}=", value)
    return problems
