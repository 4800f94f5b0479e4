"""Torch-Pruning's own importances under CUT's protocol, and MAC counting.

Re-exported by :mod:`adapters.torch_pruning`; import from there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, get_args

import torch
import torch_pruning as tp
from torch import nn

from adapters.torch_pruning.protection import (
    SaturatingCounts,
    protected_layers,
    saturating_kwargs,
    to_copy_kwargs,
)
from cut_plugin import select_tasks
from cut_plugin.record import PruningRecord, history_of, write_record
from cut_plugin.training import summed_loss
from cut_plugin.vocabulary import (
    Inputs,
    Loss,
    as_example_inputs,
    check_choice,
    check_losses,
    check_ratio,
    check_tasks,
    iterate_batches,
    model_device_dtype,
)

__all__ = ["BASELINES", "Baseline", "baseline_prune", "count_macs"]


class _BaselinePruner(SaturatingCounts, tp.pruner.BasePruner):
    """Torch-Pruning's pruner counting channels as ``CUTPruner`` does (monotone in the ratio)."""


Baseline = Literal["magnitude", "taylor", "random"]
BASELINES: tuple[str, ...] = get_args(Baseline)


def count_macs(model: nn.Module, example_inputs: Inputs) -> tuple[int, int]:
    """``(MACs, parameters)`` of ``model`` on ``example_inputs`` (Torch-Pruning's counter).

    Counts conv/linear/norm layers by exact type; functional ops (adds, concat,
    interpolation) are not counted.
    """
    was_training = model.training
    try:
        macs, params = tp.utils.count_ops_and_params(
            model, as_example_inputs(example_inputs, model)
        )
    finally:
        model.train(was_training)
    return int(macs), int(params)


def baseline_prune(
    model: nn.Module,
    example_inputs: Inputs,
    *,
    tasks: Sequence[str],
    pruning_ratio: float,
    importance: Baseline = "magnitude",
    losses: Mapping[str, Loss] | None = None,
    data: Iterable[Any] | None = None,
    max_batches: int | None = None,
    task_names: Sequence[str] | None = None,
    **tp_kwargs: Any,
) -> nn.Module:
    """Torch-Pruning's own importance under the same protocol as :func:`cut_prune`.

    The same decomposition (``select_tasks``) and protected output layers, then
    ``GroupMagnitudeImportance``, ``GroupTaylorImportance`` on the summed loss of
    ``tasks`` (gradients accumulated over ``data``), or ``RandomImportance``. The
    fair baseline for CUT: only the importance differs.
    """
    ratio = check_ratio(pruning_ratio)
    check_choice("importance", importance, BASELINES)
    example = as_example_inputs(example_inputs, model)
    selected_tasks = check_tasks(tasks)
    compact = select_tasks(model, selected_tasks, task_names=task_names)
    was_training = compact.training
    scorer = {
        "magnitude": tp.importance.GroupMagnitudeImportance,
        "taylor": tp.importance.GroupTaylorImportance,
        "random": tp.importance.RandomImportance,
    }[importance]()
    tp_kwargs = to_copy_kwargs(model, compact, tp_kwargs)
    ignored = list(tp_kwargs.pop("ignored_layers", None) or []) + protected_layers(compact, example)
    pruner = _BaselinePruner(
        compact, example, scorer, pruning_ratio=ratio, ignored_layers=ignored,
        **saturating_kwargs(tp_kwargs),
    )  # fmt: skip
    for _ in range(pruner.iterative_steps):
        if importance == "taylor":
            if losses is None or data is None:
                raise ValueError(
                    "importance='taylor' needs losses and data (the summed task loss's gradients)"
                )
            _accumulate_gradients(compact, check_losses(losses, selected_tasks), data, max_batches)
        # RandomImportance draws torch.rand(n) on torch's default device: make it the model's.
        with torch.device(model_device_dtype(compact)[0]):
            pruner.step()
    compact.zero_grad(set_to_none=True)
    compact.train(was_training)
    record = PruningRecord(
        tasks=selected_tasks,
        task_names=list(task_names) if task_names is not None else None,
        history=history_of(model) + [tuple(h) for h in pruner.pruning_history()],
    )
    return write_record(compact, record)


def _accumulate_gradients(
    model: nn.Module, losses: Mapping[str, Loss], data: Iterable[Any], max_batches: int | None
) -> None:
    """``.grad`` = the gradient of the summed task losses over ``data`` (eval mode)."""
    model.zero_grad(set_to_none=True)
    model.eval()
    for index, inputs, targets in iterate_batches(data, max_batches=max_batches):
        loss, _ = summed_loss(model, inputs, targets, losses, index=index)
        if loss is not None:  # None only with an ignore_index, which is not used here
            loss.backward()
