"""Checks at the public boundary: errors name the field, the value and what is accepted."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["check_choice", "check_int", "check_number", "check_task_mapping"]


def check_number(
    name: str, value: Any, *, low: float = -math.inf, high: float = math.inf, low_open: bool = False
) -> float:
    """Return ``value`` as a float in ``[low, high]`` (``(low, high]`` when ``low_open``), or raise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a float, got {value!r} ({type(value).__name__})")
    bracket = "(" if low_open else "["
    below = value <= low if low_open else value < low
    if math.isnan(value) or below or value > high:
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value!r}")
    return float(value)


def check_int(name: str, value: Any, *, low: int = 1) -> int:
    """Return ``value`` as an int >= ``low``, or raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {low}, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` when it is one of ``choices``, or raise naming them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_task_mapping(name: str, mapping: Any, tasks: Sequence[str]) -> dict[str, Any]:
    """Return ``mapping`` as a dict with exactly the keys ``tasks``, or raise naming the difference."""
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{name} must be a mapping {{task: value}}, got {type(mapping).__name__}")
    missing = [t for t in tasks if t not in mapping]
    extra = [t for t in mapping if t not in tasks]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no entry for task(s) {missing}")
        if extra:
            parts.append(f"entries for task(s) {extra} that have no network")
        raise ValueError(f"{name} has {' and '.join(parts)}; the networks' tasks are {list(tasks)}")
    return {t: mapping[t] for t in tasks}
