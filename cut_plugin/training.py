"""The one multi-task training loop: the summed task losses, optionally with masks and a teacher.

    L(θ) = Σ_t L_t(f_t(x; θ), y_t)  [+ distill · Σ_t D(f_t(x; θ), g_t(x))]

minimised over ``(inputs, {task: target})`` batches. :func:`cut_plugin.finetune`
(CUT step 4), :func:`pam_plugin.retrain` (PAM step 6, MTZ's retraining) and the
benchmarks' pre-training wrap :func:`train_tasks`; they differ only in their
defaults (which optimiser, steps or epochs, whether the model is copied).

Implementation notes:
- The model is trained in place and left in the train/eval mode each of its
  modules had (the teacher too); ``.grad`` is cleared at the end.
- Inputs and targets are moved to the model's device (floating ones to its
  dtype) before the forward; the caller's tensors are not changed.
- Masked elements (``masks``, True = keep) are zeroed before training and after
  every optimiser step, so they are exactly zero throughout.
- A task whose class-index targets in a batch are all ``ignore_index`` adds
  nothing for that batch (cross-entropy would be NaN); a batch where every task
  is skipped is no step.
- Data-parallel (``distributed``): under an initialised ``torch.distributed``
  process group the model trains through ``DistributedDataParallel``, each rank on
  the batches it is given (its shard, e.g. from a ``DistributedSampler``: the loop
  does not shard). DDP starts every rank from rank 0's weights and buffers and
  averages the gradients: with mean-reduced losses and equal shards, a step on the
  shards of a global batch is the single-process step on it. The caller's module
  is trained in place (record untouched) and returned unwrapped; masks are
  re-applied on every rank after every step.
- Train-mode BatchNorm normalises with each rank's own batch statistics and keeps
  rank 0's running statistics (DDP's behaviour): equal to one process only without
  train-mode BatchNorm (frozen or none). ``torch.nn.SyncBatchNorm`` is CUDA-only.
- Under DDP a rank whose batch has nothing to learn (all ``ignore_index``) steps
  with a zero loss (the ranks step together); ranks with unequal numbers of
  batches are joined (``Join``) — give every rank the same number of batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.algorithms.join import Join
from tqdm.auto import tqdm

from cut_plugin.masks import apply_masks, check_masks
from cut_plugin.parallel import DISTRIBUTED, Distributed, data_parallel, rank, use_data_parallel
from cut_plugin.vocabulary import (
    Inputs,
    Loss,
    check_batch,
    check_batches,
    check_int,
    check_losses,
    check_number,
    check_targets,
    model_device_dtype,
    move_to,
    run_model,
    scalar_loss,
)

__all__ = [
    "DISTRIBUTED",
    "Distributed",
    "OptimizerFactory",
    "SchedulerFactory",
    "TrainingHistory",
    "data_parallel",
    "summed_loss",
    "train_tasks",
]

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
"""Builds the optimiser from the trainable parameters, e.g. ``lambda p: torch.optim.SGD(p, 0.1)``."""
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]
"""Builds a learning-rate schedule from the optimiser; it is stepped after every complete pass."""
Batches = Iterable[Any] | Callable[[int], Iterable[Any]]


@dataclass
class TrainingHistory:
    """What :func:`train_tasks` did, one entry per optimiser step."""

    losses: list[float] = field(default_factory=list)
    """The step's training loss (the summed task losses, plus the distillation term)."""
    samples: list[int] = field(default_factory=list)
    """The step's batch size (first dimension of the first input)."""
    passes: list[int] = field(default_factory=list)
    """The pass over ``batches`` (epoch) the step belongs to, from 0."""

    @property
    def steps(self) -> int:
        """The number of optimiser steps taken."""
        return len(self.losses)

    def epoch_losses(self) -> list[float]:
        """The sample-weighted mean loss of each pass that took a step, in order."""
        totals: dict[int, tuple[float, int]] = {}
        for loss, count, epoch in zip(self.losses, self.samples, self.passes, strict=True):
            total, seen = totals.get(epoch, (0.0, 0))
            totals[epoch] = (total + loss * count, seen + count)
        return [total / seen for total, seen in totals.values()]


def train_tasks(
    model: nn.Module,
    batches: Batches,
    losses: Mapping[str, Loss],
    *,
    steps: int | None = None,
    epochs: int | None = None,
    optimizer: torch.optim.Optimizer | OptimizerFactory | None = None,
    lr: float | None = None,
    scheduler: SchedulerFactory | None = None,
    masks: Mapping[str, Tensor] | None = None,
    teacher: nn.Module | None = None,
    distill: float = 0.0,
    distill_loss: Callable[[Tensor, Tensor], Tensor] = F.mse_loss,
    ignore_index: int | None = None,
    task_names: Sequence[str] | None = None,
    progress: bool = True,
    desc: str = "training",
    distributed: Distributed = "auto",
) -> TrainingHistory:
    """Train ``model`` in place on the unweighted sum of the tasks' losses; return the history.

    Args:
        model: returns ``{task: Tensor}`` (or a tuple named by ``task_names``).
        batches: ``(inputs, {task: target})`` pairs (a list, a DataLoader, a
            generator), or a function ``epoch -> that pass's batches`` (e.g. a
            fresh shuffle per epoch).
        losses: ``{task: loss_fn(output, target) -> scalar}``; the tasks trained.
        steps, epochs: ``steps`` optimiser steps (``batches`` re-iterated as
            needed), or ``epochs`` passes over ``batches``; both: ``epochs``
            passes, stopping early after ``steps``. ``steps=0`` trains nothing.
        optimizer, lr: an optimiser over ``model``'s parameters, a factory
            ``params -> optimiser``, or neither and ``lr`` for Adam.
        scheduler: a factory ``optimiser -> LRScheduler``, stepped after every complete pass.
        masks: ``{param_name: bool}``; masked elements stay exactly zero.
        teacher: with ``distill > 0``, adds ``distill · Σ_t distill_loss(f_t, teacher_t)``
            (teacher in eval mode, without gradients).
        ignore_index: skip a task in a batch whose class-index targets all equal it.
        progress, desc: a tqdm progress bar and its label (shown on rank 0 only).
        distributed: ``"auto"`` (default) trains through ``DistributedDataParallel``
            when a ``torch.distributed`` process group of two or more ranks is
            initialised (e.g. under ``torchrun``), ``True`` always does (and raises
            without a process group), ``False`` never does. Each rank passes its
            own shard of the data as ``batches`` (e.g. a DataLoader with a
            ``DistributedSampler``); the history is the rank's own.

    Raises:
        ValueError: a pass over ``batches`` yields no batch (or none with a
            target to learn), a loss is not a finite scalar (naming the task and
            the batch), the model lacks an output for a task, bad options.
        TypeError: a batch is not ``(inputs, {task: target})``, wrong types.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if steps is None and epochs is None:
        raise ValueError("give steps (optimiser steps) or epochs (passes over batches), or both")
    if steps is not None:
        check_int("steps", steps, low=0)
    if epochs is not None:
        check_int("epochs", epochs)
    if (optimizer is None) == (lr is None):
        raise ValueError(
            "give either lr (for Adam) or optimizer (an optimiser or a factory params -> optimiser)"
        )
    if lr is not None:
        lr = check_number("lr", lr, low=0.0, low_open=True)
    check_number("distill", distill, low=0.0)
    if distill > 0 and teacher is None:
        raise ValueError("distill > 0 needs a teacher model (e.g. select_tasks(original, tasks))")
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, int)
    ):
        raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
    if not callable(batches):
        check_batches(batches)
    tasks = list(losses) if isinstance(losses, Mapping) else []
    task_losses = check_losses(losses, tasks)
    if not tasks:
        raise ValueError("losses is empty: give one loss per task to train")
    fixed = check_masks(model, masks) if masks is not None else {}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no parameter with requires_grad=True to train")
    if isinstance(optimizer, torch.optim.Optimizer):
        step_fn = optimizer
    elif optimizer is not None:
        step_fn = optimizer(trainable)
    else:
        step_fn = torch.optim.Adam(trainable, lr=lr)  # type: ignore[arg-type]
    parallel = use_data_parallel(distributed)
    schedule = scheduler(step_fn) if scheduler is not None else None
    modes = [(m, m.training) for m in model.modules()]
    modes += [(m, m.training) for m in teacher.modules()] if teacher is not None else []
    history = TrainingHistory()
    bar = tqdm(total=steps, desc=desc, disable=not progress or rank() > 0, leave=False)
    net: nn.Module = model
    try:
        apply_masks(model, fixed, inplace=True)
        model.train()
        if teacher is not None:
            teacher.eval()
        if parallel:
            net = data_parallel(model, tasks, task_names=task_names)
        joined = Join([net]) if parallel else contextlib.nullcontext()  # type: ignore[list-item]
        with joined:
            epoch, index = 0, 0
            while (epochs is None or epoch < epochs) and (steps is None or history.steps < steps):
                source = batches(epoch) if callable(batches) else batches
                check_batches(source)
                seen, taken, finished = 0, 0, True
                for batch in source:
                    inputs, targets = check_batch(batch, index)
                    loss, outputs = summed_loss(
                        net,
                        inputs,
                        targets,
                        task_losses,
                        index=index,
                        task_names=None if parallel else task_names,
                        ignore_index=ignore_index,
                    )
                    index, seen = index + 1, seen + 1
                    if loss is None and parallel:
                        # the ranks step together: this one adds a zero gradient to the average
                        loss = torch.stack([o.sum() for o in outputs.values()]).sum() * 0.0
                    if loss is None:
                        continue
                    if teacher is not None and distill > 0:
                        with torch.no_grad():
                            reference = run_model(teacher, inputs, task_names)
                        loss = loss + distill * sum(
                            distill_loss(outputs[t], reference[t].detach()) for t in task_losses
                        )
                    step_fn.zero_grad(set_to_none=True)
                    loss.backward()
                    step_fn.step()
                    apply_masks(model, fixed, inplace=True)
                    value = loss.item()
                    history.losses.append(value)
                    history.samples.append(_batch_size(inputs))
                    history.passes.append(epoch)
                    taken += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4f}")
                    if steps is not None and history.steps >= steps:
                        finished = False
                        break
                if finished:
                    _check_pass(epoch, seen, taken)
                    if schedule is not None:
                        schedule.step()
                epoch += 1
    finally:
        bar.close()
        step_fn.zero_grad(set_to_none=True)
        # dropping the wrapper removes DDP's gradient hooks from the caller's parameters
        del net
        for module, mode in modes:
            module.training = mode
    return history


def _check_pass(epoch: int, seen: int, taken: int) -> None:
    """Raise when a complete pass over the batches trained nothing (it would loop forever)."""
    if seen == 0:
        raise ValueError(
            f"batches yielded no batch in pass {epoch} (or was a one-shot iterator already used "
            "up); pass a DataLoader or a list of (inputs, {task: target})"
        )
    if taken == 0:
        raise ValueError(
            f"pass {epoch} over batches had no batch with a target to learn "
            "(every target of every task was ignore_index)"
        )


def summed_loss(
    model: nn.Module,
    inputs: Inputs,
    targets: Mapping[str, Tensor],
    losses: Mapping[str, Loss],
    *,
    index: int = 0,
    task_names: Sequence[str] | None = None,
    ignore_index: int | None = None,
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """One batch's ``Σ_t L_t(f_t(x), y_t)`` and the model's outputs ``{task: Tensor}``.

    Inputs and targets are moved to the model's device (floating ones to its
    dtype). The loss is None when ``ignore_index`` skips every task of the batch.
    Raises naming the task and batch ``index`` when a target or an output is
    missing or a loss is not a finite scalar.
    """
    tasks = list(losses)
    checked = check_targets(targets, tasks, index)
    outputs = run_model(model, inputs, task_names)
    missing = [t for t in tasks if t not in outputs]
    if missing:
        raise ValueError(
            f"the model returns no output for task(s) {missing}; it returns {list(outputs)}"
        )
    device, dtype = model_device_dtype(model)
    terms = []
    for task in tasks:
        target = move_to(checked[task], device, dtype)
        if not _ignored(target, ignore_index):
            term = scalar_loss(losses[task], outputs[task], target, task=task, index=index)
            if torch.is_grad_enabled() and not term.requires_grad:
                # Summed with the others it would train nothing of this task, silently.
                raise ValueError(
                    f"the loss of task {task!r} does not require grad at batch {index}: its head "
                    "would never change. Its loss must be computed from the output it is given "
                    "(no .detach(), .item() or torch.no_grad()), and the head's parameters need "
                    "requires_grad=True"
                )
            terms.append(term)
    # one sum node: its backward hands every task's loss the same gradient 1 as a chain of adds
    return (torch.stack(terms).sum() if terms else None), outputs


def _ignored(target: Any, ignore_index: int | None) -> bool:
    """True when every class-index target of a task is ``ignore_index`` (cross-entropy → NaN)."""
    return (
        ignore_index is not None
        and isinstance(target, Tensor)
        and target.dim() == 1
        and not target.is_floating_point()
        and bool((target == ignore_index).all())
    )


def _batch_size(inputs: Inputs) -> int:
    """The first dimension of the first Tensor input (1 for a scalar or no Tensor)."""
    first = (
        inputs
        if isinstance(inputs, Tensor)
        else next((x for x in inputs if isinstance(x, Tensor)), None)
    )
    return int(first.shape[0]) if isinstance(first, Tensor) and first.dim() else 1
