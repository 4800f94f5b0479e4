"""Fine-tuning of a compact model, with masks held fixed (CUT step 4).

The paper fine-tunes the masked model with Adam (lr 1e-5, ~1000 iterations) on
the selected tasks' summed losses; no distillation in the released code. Here a
teacher (the original model restricted to the same tasks, see ``select_tasks``)
can add ``distill · Σ_t distill_loss(student_t, teacher_t)``.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from cut_plugin.masks import check_masks
from cut_plugin.vocabulary import (
    Loss,
    check_losses,
    check_targets,
    model_device_dtype,
    run_model,
    scalar_loss,
)

__all__ = ["finetune"]


def _cycle(batches: Iterable[Any]) -> Iterable[tuple[int, Any]]:
    """Yield ``(index, batch)`` forever, re-iterating ``batches`` when it is exhausted."""
    index = 0
    while True:
        produced = False
        for batch in batches:
            produced = True
            yield index, batch
            index += 1
        if not produced:
            raise ValueError(
                "batches yielded no batch (or was a one-shot iterator already used up); "
                "pass a DataLoader or a list of (inputs, targets)"
            )


def finetune(
    model: nn.Module,
    batches: Iterable[Any],
    losses: Mapping[str, Loss],
    *,
    steps: int,
    lr: float,
    masks: Mapping[str, Tensor] | None = None,
    teacher: nn.Module | None = None,
    distill: float = 0.0,
    distill_loss: Callable[[Tensor, Tensor], Tensor] = F.mse_loss,
    progress: bool = True,
    inplace: bool = False,
    task_names: Sequence[str] | None = None,
) -> nn.Module:
    """Fine-tune on the tasks in ``losses`` with Adam; return the fine-tuned copy.

    Args:
        model: the compact model; copied unless ``inplace=True``.
        batches: ``(inputs, {task: target})`` pairs, re-iterated as needed for ``steps``.
        losses: ``{task: loss_fn}``; the training loss is their unweighted sum.
        steps: optimiser steps. lr: Adam's learning rate.
        masks: ``{param_name: bool}``; masked elements stay exactly zero.
        teacher: a model returning the same tasks; with ``distill > 0`` its outputs
            are matched by ``distill_loss`` (MSE by default), teacher in eval mode.
        task_names: names of a tuple output.

    Every module of the result (and of ``teacher``) is left in the train/eval mode it had.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        raise ValueError(f"lr must be a positive float, got {lr!r}")
    if isinstance(distill, bool) or not isinstance(distill, int | float) or not distill >= 0:
        raise ValueError(f"distill must be a float >= 0, got {distill!r}")
    if distill > 0 and teacher is None:
        raise ValueError("distill > 0 needs a teacher model (e.g. select_tasks(original, tasks))")
    tasks = list(losses) if isinstance(losses, Mapping) else []
    task_losses = check_losses(losses, tasks)
    if not tasks:
        raise ValueError("losses is empty: give one loss per task to fine-tune")
    student = model if inplace else copy.deepcopy(model)
    student_modes = [(m, m.training) for m in student.modules()]
    fixed = check_masks(student, masks) if masks is not None else {}
    params = dict(student.named_parameters())
    trainable = [p for p in student.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no parameter with requires_grad=True to fine-tune")
    optimizer = torch.optim.Adam(trainable, lr=float(lr))
    device, _ = model_device_dtype(student)
    _apply(params, fixed)
    student.train()
    teacher_modes = [(m, m.training) for m in teacher.modules()] if teacher is not None else []
    if teacher is not None:
        teacher.eval()
    bar = tqdm(total=steps, desc="fine-tuning", disable=not progress, leave=False)
    try:
        for index, batch in itertools.islice(_cycle(batches), steps):
            if not isinstance(batch, tuple | list) or len(batch) != 2:
                raise TypeError(f"batch {index} must be a pair (inputs, {{task: target}})")
            inputs, raw_targets = batch
            targets = check_targets(raw_targets, tasks, index)
            outputs = run_model(student, inputs, task_names)
            missing = [t for t in tasks if t not in outputs]
            if missing:
                raise ValueError(
                    f"the model returns no output for task(s) {missing}; it returns {list(outputs)}"
                )
            loss: Tensor = sum(  # type: ignore[assignment]
                scalar_loss(
                    task_losses[t], outputs[t], _to(targets[t], device), task=t, index=index
                )
                for t in tasks
            )
            if teacher is not None and distill > 0:
                with torch.no_grad():
                    reference = run_model(teacher, inputs, task_names)
                loss = loss + distill * sum(
                    distill_loss(outputs[t], reference[t].detach()) for t in tasks
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            optimizer.step()
            _apply(params, fixed)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")  # type: ignore[union-attr]
    finally:
        bar.close()
        for module, mode in student_modes + teacher_modes:
            module.training = mode
    optimizer.zero_grad(set_to_none=True)
    return student


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, Tensor) else value


def _apply(params: dict[str, nn.Parameter], masks: Mapping[str, Tensor]) -> None:
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].dtype))
