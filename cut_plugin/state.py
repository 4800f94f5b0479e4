"""Temporarily change a model's mode and ``requires_grad`` flags, then put them back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["scoring_state"]


@contextmanager
def scoring_state(model: nn.Module, *, train: bool = False) -> Iterator[nn.Module]:
    """Within the block: every module in eval (or train) mode, every floating parameter
    requires grad. Afterwards: each module's mode and each parameter's ``requires_grad``
    are as they were, whatever happened inside."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.train(train)
        for p, _ in flags:
            if p.is_floating_point():
                p.requires_grad_(True)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
