"""Joint retraining of a merged network: the sum of the task losses (PAM step 6, MTZ's retraining).

    L(θ) = Σ_t L_t(f_t(x; θ), y_t)

minimised with Adam or SGD over ``(inputs, {task: target})`` batches. The loop
is :func:`cut_plugin.training.train_tasks`, shared with CUT's ``finetune``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from cut_plugin.training import train_tasks
from cut_plugin.vocabulary import Loss, check_choice, check_int, check_number

__all__ = ["OPTIMIZERS", "retrain"]

Optimizer = Literal["adam", "sgd"]
OPTIMIZERS: tuple[Optimizer, ...] = ("adam", "sgd")


def retrain(
    model: nn.Module,
    batches: Iterable[tuple[Any, Mapping[str, Tensor]]],
    losses: Mapping[str, Loss],
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    optimizer: Optimizer = "adam",
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    max_steps: int | None = None,
    inplace: bool = False,
    progress: bool = True,
) -> nn.Module:
    """Train ``model`` (returning ``{task: output}``) on the summed task losses; return it.

    Args:
        model: e.g. a :class:`pam_plugin.MergedNetwork`; copied unless ``inplace=True``.
        batches: ``(inputs, {task: target})`` pairs, iterated once per epoch
            (a list or a DataLoader); ``inputs`` a Tensor or a tuple of Tensors,
            moved with the targets to the model's device (floating ones to its dtype).
        losses: ``{task: loss_fn(output, target)}``; the tasks trained.
        epochs, max_steps: passes over ``batches``; optional cap on optimiser steps.
        optimizer: ``"adam"`` or ``"sgd"`` (with ``momentum``; ``nesterov=True`` for
            Nesterov momentum, the released PAM pruner's optimiser).
        progress: show a tqdm progress bar.

    Every module is left in the train/eval mode it had.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_int("epochs", epochs)
    lr = check_number("lr", lr, low=0.0, low_open=True)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    momentum = check_number("momentum", momentum, low=0.0)
    weight_decay = check_number("weight_decay", weight_decay, low=0.0)
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov must be a bool, got {nesterov!r}")
    if nesterov and (optimizer != "sgd" or momentum == 0):
        raise ValueError("nesterov=True needs optimizer='sgd' with momentum > 0")
    if max_steps is not None:
        check_int("max_steps", max_steps)

    def build(parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
        if optimizer == "adam":
            return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
        return torch.optim.SGD(
            parameters, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
        )

    trained = model if inplace else copy.deepcopy(model)
    train_tasks(
        trained,
        batches,
        losses,
        epochs=epochs,
        steps=max_steps,
        optimizer=build,
        progress=progress,
        desc="retraining",
    )
    return trained
