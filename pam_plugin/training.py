"""Joint retraining of a merged network: the sum of the task losses (PAM step 6, MTZ's retraining).

    L(θ) = Σ_t L_t(f_t(x; θ), y_t)

minimised with Adam or SGD over ``(inputs, {task: target})`` batches.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pam_plugin.validation import check_choice, check_int, check_number

__all__ = ["OPTIMIZERS", "retrain"]

Loss = Callable[[Tensor, Tensor], Tensor]
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
    weight_decay: float = 0.0,
    max_steps: int | None = None,
    inplace: bool = False,
    progress: bool = True,
) -> nn.Module:
    """Train ``model`` (returning ``{task: output}``) on the summed task losses; return it.

    Args:
        model: e.g. a :class:`pam_plugin.MergedNetwork`; copied unless ``inplace=True``.
        batches: ``(inputs, {task: target})`` pairs, iterated once per epoch
            (a list or a DataLoader); ``inputs`` a Tensor or a tuple of Tensors.
        losses: ``{task: loss_fn(output, target)}``; the tasks trained.
        epochs, max_steps: passes over ``batches``; optional cap on optimiser steps.
        optimizer: ``"adam"`` or ``"sgd"`` (with ``momentum``).
        progress: show a tqdm progress bar.

    The model is left in the train/eval mode it had.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(losses, Mapping) or not losses:
        raise TypeError("losses must be a non-empty mapping {task: loss_fn}")
    for task, loss_fn in losses.items():
        if not callable(loss_fn):
            raise TypeError(f"losses[{task!r}] must be callable (output, target) -> scalar Tensor")
    check_int("epochs", epochs)
    check_number("lr", lr, low=0.0, low_open=True)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_number("weight_decay", weight_decay, low=0.0)
    if max_steps is not None:
        check_int("max_steps", max_steps)
    trained = model if inplace else copy.deepcopy(model)
    parameters = [p for p in trained.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("the model has no parameter with requires_grad=True to train")
    if optimizer == "adam":
        step_fn: torch.optim.Optimizer = torch.optim.Adam(
            parameters, lr=lr, weight_decay=weight_decay
        )
    else:
        step_fn = torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    was_training = trained.training
    trained.train()
    steps = 0
    bar = tqdm(desc="retraining", disable=not progress, leave=False, total=max_steps)
    try:
        for _ in range(epochs):
            for inputs, targets in batches:
                outputs = trained(*inputs) if isinstance(inputs, tuple | list) else trained(inputs)
                missing = [t for t in losses if t not in outputs or t not in targets]
                if missing:
                    raise ValueError(
                        f"task(s) {missing} have a loss but no model output or no target in the batch"
                    )
                terms = {t: losses[t](outputs[t], targets[t]) for t in losses}
                bad = [t for t, value in terms.items() if not torch.isfinite(value).all()]
                if bad:
                    raise ValueError(
                        f"the loss of task(s) {bad} is NaN or inf at step {steps}: check that batch's "
                        "targets (e.g. every target of a task set to an ignore_index) and the outputs"
                    )
                loss = torch.stack(list(terms.values())).sum()
                step_fn.zero_grad(set_to_none=True)
                loss.backward()
                step_fn.step()
                steps += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if max_steps is not None and steps >= max_steps:
                    return trained
        if steps == 0:
            raise ValueError(
                "batches yielded no batch; pass a list or DataLoader of (inputs, {task: target})"
            )
        return trained
    finally:
        bar.close()
        step_fn.zero_grad(set_to_none=True)
        trained.train(was_training)
