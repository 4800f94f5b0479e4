"""CUT as a Torch-Pruning pruner, and the one-call ``cut_prune``.

Re-exported by :mod:`adapters.torch_pruning`; import from there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch_pruning as tp
from torch import nn

from adapters.torch_pruning.importance import CUTImportance
from adapters.torch_pruning.protection import protected_layers, to_copy_kwargs
from cut_plugin import apply_masks, cut_masks, score_tasks, select_tasks
from cut_plugin.config import CUT_OPTIONS, CUTConfig, resolve_config, split_options
from cut_plugin.record import PruningRecord, history_of, write_record
from cut_plugin.vocabulary import (
    Inputs,
    Loss,
    as_example_inputs,
    check_losses,
    check_ratio,
    check_tasks,
)

__all__ = ["CUTPruner", "cut_prune"]


class CUTPruner(tp.pruner.BasePruner):
    """A Torch-Pruning pruner that makes a compact model serving only ``tasks``.

    On construction: the model is copied with only ``tasks`` (``select_tasks``;
    the caller's model is never changed), every task's output layer is added to
    ``ignored_layers`` (output widths never change), and :class:`CUTImportance` is
    estimated on ``data``. ``step()`` prunes (re-estimating the scores first when
    an earlier step changed the model). The compact model is ``pruner.model``.

    CUT's options: ``config=CUTConfig(...)`` or its fields as keywords. Every other
    keyword is Torch-Pruning's: ``global_pruning``, ``iterative_steps``,
    ``pruning_ratio_dict``, ``round_to``, ``max_pruning_ratio``, ``ignored_layers``...
    The compact model carries a :class:`cut_plugin.PruningRecord` (tasks, history,
    config), updated after every step.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Inputs,
        *,
        tasks: Sequence[str],
        losses: Mapping[str, Loss],
        data: Iterable[Any],
        pruning_ratio: float = 0.5,
        config: CUTConfig | Mapping[str, Any] | None = None,
        max_batches: int | None = None,
        task_names: Sequence[str] | None = None,
        progress: bool = True,
        **kwargs: Any,
    ) -> None:
        ratio = check_ratio(pruning_ratio)
        options, tp_kwargs = split_options(kwargs)
        if "importance" in tp_kwargs:
            raise TypeError(
                "CUTPruner builds its own CUTImportance; use tp.pruner.BasePruner for another importance"
            )
        example = as_example_inputs(example_inputs, model)
        selected_tasks = check_tasks(tasks)
        cut = resolve_config(config, options, tasks=selected_tasks)
        compact = select_tasks(model, selected_tasks, task_names=task_names)
        check_losses(losses, selected_tasks)
        self._prior_history = history_of(model)
        write_record(
            compact,
            PruningRecord(
                tasks=selected_tasks,
                task_names=list(task_names) if task_names is not None else None,
                history=list(self._prior_history),
                config=cut,
            ),
        )
        tp_kwargs = to_copy_kwargs(model, compact, tp_kwargs)
        ignored = list(tp_kwargs.pop("ignored_layers", None) or [])
        ignored += [
            m for m in protected_layers(compact, example) if all(m is not k for k in ignored)
        ]
        importance = CUTImportance(
            losses, tasks=selected_tasks, config=cut, keep_ratio=1.0 - ratio, progress=progress
        )
        self.data = data
        self.max_batches = max_batches
        importance.estimate(compact, data, max_batches)
        was_training = model.training
        super().__init__(
            compact, example, importance, pruning_ratio=ratio, ignored_layers=ignored, **tp_kwargs
        )
        compact.train(was_training)

    def step(self, interactive: bool = False) -> Any:
        """Prune one step; with ``interactive=True`` yield the groups to prune yourself."""
        importance: CUTImportance = self.importance
        if importance.is_stale(self.model):
            importance.estimate(self.model, self.data, self.max_batches)
        schedule = self.per_step_pruning_ratio
        last = len(schedule) - 1
        step_ratio = (
            float(schedule[min(self.current_step + 1, last)]) if schedule else self.pruning_ratio
        )
        done = float(schedule[min(self.current_step, last)]) if schedule else 0.0
        # Torch-Pruning's step ratios are fractions of the initial width, but the
        # tasks vote on the channels that are left: each keeps (1 - r_k) / (1 - r_{k-1}).
        keep = min(1.0, max(0.0, (1.0 - step_ratio) / max(1.0 - done, 1e-12)))
        if not interactive:
            with importance.keeping(keep):
                result = super().step(False)
            self._record_history()
            return result

        def groups() -> Any:
            with importance.keeping(keep):
                yield from super(CUTPruner, self).step(True)
            self._record_history()

        return groups()

    def _record_history(self) -> None:
        history = self._prior_history + [tuple(h) for h in self.pruning_history()]
        write_record(self.model, history=history)


def cut_prune(
    model: nn.Module,
    example_inputs: Inputs,
    *,
    tasks: Sequence[str],
    losses: Mapping[str, Loss],
    data: Iterable[Any],
    pruning_ratio: float,
    granularity: str = "channel",
    config: CUTConfig | Mapping[str, Any] | None = None,
    max_batches: int | None = None,
    task_names: Sequence[str] | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """One call: a new compact model serving only ``tasks`` (the caller's model untouched).

    ``granularity="channel"`` removes ``pruning_ratio`` of the channels physically
    (:class:`CUTPruner`, all steps run; other ``kwargs`` go to Torch-Pruning).
    ``granularity="weight"`` gives the paper's unstructured masks (``cut_masks``):
    the returned model has the masked weights zeroed and its masks in its
    :class:`cut_plugin.PruningRecord` (``read_record(model).masks``, also
    ``model.cut_pam_masks``), to pass to ``finetune(masks=...)``.

    CUT's options: ``config=CUTConfig(...)`` or its fields as keywords (``criterion``,
    ``rule``, ``votes``, ``weights`` — a dict or a list in the order of ``tasks`` —,
    ``calibrate``).
    """
    if granularity == "channel":
        pruner = CUTPruner(
            model,
            example_inputs,
            tasks=tasks,
            losses=losses,
            data=data,
            pruning_ratio=pruning_ratio,
            config=config,
            max_batches=max_batches,
            task_names=task_names,
            progress=progress,
            **kwargs,
        )
        for _ in range(pruner.iterative_steps):
            pruner.step()
        return pruner.model
    if granularity == "weight":
        ratio = check_ratio(pruning_ratio)
        selected_tasks = check_tasks(tasks)
        options, rest = split_options(kwargs)
        if rest:
            raise TypeError(
                f"cut_prune(granularity='weight') got unknown option(s) {sorted(rest)}; "
                f"CUT's options are {list(CUT_OPTIONS)}"
            )
        cut = resolve_config(config, options, tasks=selected_tasks)
        selected = select_tasks(model, selected_tasks, task_names=task_names)
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
        return write_record(pruned, record)
    raise ValueError(f"granularity must be 'channel' or 'weight', got {granularity!r}")
