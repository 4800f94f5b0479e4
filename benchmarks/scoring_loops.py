"""The loops ``score_tasks`` and the channel criterion are timed against, and the probes.

The baseline is what a user writes by hand: per batch one forward, then one
``torch.autograd.grad`` per task over every parameter (the graph retained but for
the last task), nothing accumulated. The probes bound what a criterion can reach:
the weight gradients only, the conv/linear output gradients only, the forwards only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "activations_only_loop",
    "forward_only",
    "gradient_loop",
    "plain_loop",
    "weights_only_loop",
]

PRUNABLE = (nn.Conv2d, nn.Linear)


def gradient_loop(model: nn.Module, data: list, losses: dict, params: list[Tensor]) -> None:
    """1 forward + T backward per batch, the gradients of ``params`` only."""
    for inputs, targets in data:
        outputs = model(inputs)
        tasks = list(losses)
        for i, task in enumerate(tasks):
            loss = losses[task](outputs[task], targets[task])
            torch.autograd.grad(loss, params, retain_graph=i < len(tasks) - 1, allow_unused=True)


def plain_loop(model: nn.Module, data: list, losses: dict) -> None:
    model.eval()
    gradient_loop(model, data, losses, [p for p in model.parameters() if p.requires_grad])


def weights_only_loop(model: nn.Module, data: list, losses: dict) -> None:
    """The plain loop, gradients for the conv/linear weights only (what element scores need)."""
    gradient_loop(
        model, data, losses, [m.weight for m in model.modules() if isinstance(m, PRUNABLE)]
    )


def activations_only_loop(model: nn.Module, data: list, losses: dict) -> None:
    """The plain loop, gradients for the conv/linear outputs only (no weight gradient at all)."""
    for inputs, targets in data:
        outputs_of: list[Tensor] = []
        hooks = [
            m.register_forward_hook(lambda _m, _i, out, kept=outputs_of: kept.append(out))
            for m in model.modules()
            if isinstance(m, PRUNABLE)
        ]
        try:
            outputs = model(inputs)
        finally:
            for hook in hooks:
                hook.remove()
        tasks = list(losses)
        for i, task in enumerate(tasks):
            loss = losses[task](outputs[task], targets[task])
            torch.autograd.grad(
                loss, outputs_of, retain_graph=i < len(tasks) - 1, allow_unused=True
            )


def forward_only(model: nn.Module, data: list, losses: dict) -> None:
    with torch.enable_grad():
        for inputs, _ in data:
            model(inputs)
