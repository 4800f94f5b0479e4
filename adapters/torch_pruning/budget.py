"""Prune to a MAC budget: the smallest pruning ratio whose compact model fits it.

Edge devices are specified in compute, not in a fraction of channels, and methods
are compared at equal MACs (BENCHMARKS.md): with ``global_pruning=True`` the MACs a
pruning ratio leaves depend on where the channels go. :func:`search_ratio` bisects
the ratio of any ``ratio -> compact model`` function; ``cut_prune(target_macs=...)``
and ``baseline_prune(target_macs=...)`` use it.

Re-exported by :mod:`adapters.torch_pruning`; import from there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["check_target_macs", "macs_budget", "search_ratio"]

MAX_RATIO = 0.99
"""The largest pruning ratio the search tries (Torch-Pruning keeps >= 1 channel a layer anyway)."""


def check_target_macs(value: Any) -> float | int:
    """``target_macs`` as a fraction in (0, 1] or a positive MAC count, or a clear error."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            "target_macs must be a fraction of the dense MACs in (0, 1] (e.g. 0.25) or a MAC "
            f"count > 1 (an int, e.g. 2_000_000), got {value!r}"
        )
    if isinstance(value, float) and not 0.0 < value <= 1.0:
        raise ValueError(
            f"target_macs={value!r}: a float is a fraction of the dense model's MACs and must be in "
            "(0, 1]; pass an int for an absolute MAC count"
        )
    if isinstance(value, int) and value < 1:
        raise ValueError(f"target_macs={value!r}: a MAC count must be >= 1")
    return value


def macs_budget(target: float | int, dense_macs: int) -> int:
    """The MAC count ``target`` stands for (a float: that fraction of ``dense_macs``)."""
    target = check_target_macs(target)
    return max(1, int(target * dense_macs)) if isinstance(target, float) else int(target)


def search_ratio(
    prune: Callable[[float], nn.Module],
    count: Callable[[nn.Module], int],
    budget: int,
    *,
    steps: int = 12,
    tolerance: float = 0.005,
    max_ratio: float = MAX_RATIO,
) -> tuple[nn.Module, float, int]:
    """``(model, ratio, macs)``: the least-pruned ``prune(ratio)`` with ``count(model) <= budget``.

    Bisection over ``[0, max_ratio]`` (``steps`` halvings at most), stopping early once
    a fitting model is within ``tolerance`` (relative) of the budget. MACs need not be
    exactly monotone in the ratio: the answer is the best fitting model tried, and it
    always fits. Raises ``ValueError`` when even ``max_ratio`` does not fit, with the
    smallest MACs reachable.
    """
    if budget < 1:
        raise ValueError(f"the MAC budget must be >= 1, got {budget}")
    dense = prune(0.0)
    dense_macs = count(dense)
    if dense_macs <= budget:
        return dense, 0.0, dense_macs
    smallest = prune(max_ratio)
    smallest_macs = count(smallest)
    if smallest_macs > budget:
        raise ValueError(
            f"target_macs: {budget:,} MACs cannot be reached; pruning {max_ratio:.0%} of the "
            f"channels still leaves {smallest_macs:,} of {dense_macs:,} (output layers keep their "
            "width and every layer keeps at least one channel). Ask for at least "
            f"{smallest_macs / dense_macs:.4f} of the dense MACs"
        )
    best = (smallest, max_ratio, smallest_macs)
    low, high = 0.0, max_ratio
    for _ in range(steps):
        if best[2] >= budget * (1.0 - tolerance):
            break
        middle = (low + high) / 2
        model = prune(middle)
        macs = count(model)
        if macs <= budget:
            high = middle
            if macs > best[2] or (macs == best[2] and middle < best[1]):
                best = (model, middle, macs)
        else:
            low = middle
    return best
