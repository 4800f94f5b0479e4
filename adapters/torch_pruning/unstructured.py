"""``cut_prune(granularity="weight")``: the paper's unstructured masks, and the ratio-0 check.

Re-exported through :func:`adapters.torch_pruning.cut_prune`; import from there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from cut_plugin import apply_masks, cut_masks, score_tasks, select_tasks
from cut_plugin.checks import check_outputs, outputs_of
from cut_plugin.config import CUT_OPTIONS, CUTConfig, resolve_config, split_options
from cut_plugin.record import PruningRecord, history_of, write_record
from cut_plugin.vocabulary import Inputs, Loss, as_example_inputs, check_ratio, check_tasks

__all__ = ["check_unpruned", "prune_weights"]


def prune_weights(
    model: nn.Module,
    example_inputs: Inputs,
    *,
    tasks: Sequence[str],
    losses: Mapping[str, Loss],
    data: Iterable[Any],
    pruning_ratio: float | None,
    config: CUTConfig | Mapping[str, Any] | None,
    max_batches: int | None,
    task_names: Sequence[str] | None,
    progress: bool,
    check: bool,
    **kwargs: Any,
) -> nn.Module:
    """The selected tasks' model with CUT's unstructured masks applied and recorded."""
    ratio = check_ratio(pruning_ratio)
    selected_tasks = check_tasks(tasks)
    options, rest = split_options(kwargs)
    if rest:
        raise TypeError(
            f"cut_prune(granularity='weight') got unknown option(s) {sorted(rest)}; "
            f"CUT's options are {list(CUT_OPTIONS)}"
        )
    cut = resolve_config(config, options, tasks=selected_tasks)
    example = as_example_inputs(example_inputs, model)
    selected = select_tasks(model, selected_tasks, task_names=task_names, example_inputs=example)
    scores = score_tasks(
        selected,
        data,
        losses,
        tasks=selected_tasks,
        criterion=cut.criterion,
        max_batches=max_batches,
        progress=progress,
    )
    masks = cut_masks(selected, scores, pruning_ratio=ratio, config=cut)
    pruned = apply_masks(selected, masks, inplace=True)
    record = PruningRecord(
        tasks=selected_tasks,
        task_names=list(task_names) if task_names is not None else None,
        history=history_of(model),
        masks=masks,
        config=cut,
    )
    if check and ratio == 0.0:
        check_unpruned(model, pruned, example, selected_tasks, task_names)
    return write_record(pruned, record)


def check_unpruned(
    model: nn.Module,
    compact: nn.Module,
    example_inputs: Inputs,
    tasks: Sequence[str],
    task_names: Sequence[str] | None,
) -> None:
    """At ``pruning_ratio=0`` the compact model computes the original's selected outputs."""
    example = as_example_inputs(example_inputs, model)
    reference = outputs_of(model, example, task_names)
    check_outputs(
        "cut_prune(pruning_ratio=0)",
        compact,
        example,
        {task: reference[task] for task in tasks},
        promise="the original model",
        fix="nothing should have been removed: report the model (cut_prune(..., check=False) "
        "skips this check)",
    )
