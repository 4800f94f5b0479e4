"""Fine-tuning of a compact model, with masks held fixed (CUT step 4).

The paper fine-tunes the masked model with Adam (lr 1e-5, ~1000 iterations) on
the selected tasks' summed losses; no distillation in the released code. Here a
teacher (the original model restricted to the same tasks, see ``select_tasks``)
can add ``distill · Σ_t distill_loss(student_t, teacher_t)``. The loop itself is
:func:`cut_plugin.training.train_tasks`, shared with PAM's ``retrain``.

Data-parallel: under an initialised ``torch.distributed`` process group
(``torchrun``), ``finetune`` trains through ``DistributedDataParallel``; every
rank passes its own shard of the batches (a ``DistributedSampler``), and with
equal shards of each global batch the result equals one process on the global
batches (models without train-mode BatchNorm; see :mod:`cut_plugin.training`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from cut_plugin.training import Distributed, train_tasks
from cut_plugin.vocabulary import Loss, check_int, check_number

__all__ = ["finetune"]


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
    distributed: Distributed = "auto",
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
        distributed: ``"auto"`` trains data-parallel (``DistributedDataParallel``)
            when a ``torch.distributed`` process group of 2+ ranks is initialised,
            ``True`` requires one, ``False`` never. Each rank gives its own shard as
            ``batches`` (``DistributedSampler``: the function does not shard); every
            rank starts from rank 0's weights, the gradients are averaged over the
            ranks at each step, masks are re-applied on every rank, and every rank
            returns the same unwrapped model with its pruning record.

    Every module of the result (and of ``teacher``) is left in the train/eval mode it had.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    # checked again by train_tasks; here so that a bad call costs no copy of the model
    check_int("steps", steps, low=0)
    check_number("lr", lr, low=0.0, low_open=True)
    student = model if inplace else copy.deepcopy(model)
    train_tasks(
        student,
        batches,
        losses,
        steps=steps,
        lr=lr,
        masks=masks,
        teacher=teacher,
        distill=distill,
        distill_loss=distill_loss,
        task_names=task_names,
        progress=progress,
        desc="fine-tuning",
        distributed=distributed,
    )
    return student
