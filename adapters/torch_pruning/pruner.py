"""CUT as a Torch-Pruning pruner, and the one-call ``cut_prune``.

Re-exported by :mod:`adapters.torch_pruning`; import from there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch_pruning as tp
from torch import Tensor, fx, nn

from adapters.torch_pruning.attention import head_options, plan_head_step, protect_mha, sync_heads
from adapters.torch_pruning.baselines import count_macs
from adapters.torch_pruning.budget import check_target_macs, macs_budget, search_ratio
from adapters.torch_pruning.importance import CUTImportance
from adapters.torch_pruning.protection import (
    SaturatingCounts,
    protected_layers,
    saturating_kwargs,
    to_copy_kwargs,
)
from adapters.torch_pruning.unstructured import check_unpruned, prune_weights
from cut_plugin import score_tasks, select_tasks
from cut_plugin.channel_scoring import score_channels
from cut_plugin.checks import (
    FROZEN_ATTRIBUTE_FIX,
    check_shapes,
    outputs_of,
    unwrap_model,
)
from cut_plugin.config import CUTConfig, resolve_config, split_options
from cut_plugin.record import PruningRecord, history_of, write_record
from cut_plugin.scoring import CHANNEL_CRITERIA, check_element_criterion
from cut_plugin.state import scoring_state
from cut_plugin.vocabulary import (
    Inputs,
    Loss,
    as_example_inputs,
    check_losses,
    check_ratio,
    check_tasks,
)

__all__ = ["CUTPruner", "cut_prune"]


class CUTPruner(SaturatingCounts, tp.pruner.BasePruner):
    """A Torch-Pruning pruner that makes a compact model serving only ``tasks``.

    On construction: the model is copied with only ``tasks`` (``select_tasks``;
    the caller's model is never changed), every task's output layer is added to
    ``ignored_layers`` (output widths never change), and :class:`CUTImportance` is
    estimated on ``data``. ``step()`` prunes (re-estimating the scores first when
    an earlier step changed the model). The compact model is ``pruner.model``.

    CUT's options: ``config=CUTConfig(...)`` or its fields as keywords. Every other
    keyword is Torch-Pruning's: ``global_pruning``, ``iterative_steps``,
    ``pruning_ratio_dict``, ``max_pruning_ratio``, ``ignored_layers``...

    ``round_to=k`` (Torch-Pruning's option, checked here): every pruned layer keeps
    a multiple of ``k`` channels (the kept count rounded down, at least ``k``;
    a layer of ``k`` channels or fewer is left whole). ``None`` (default) keeps
    ``int(C · (1 - pruning_ratio))`` exactly. Measured on one CPU thread
    (``benchmarks/latency_scaling.py``): at ``pruning_ratio=0.5`` on power-of-two
    widths the counts are multiples of 8 already and rounding changes nothing; it
    matters for odd counts (other ratios and widths), see the README's latency table.
    The compact model carries a :class:`cut_plugin.PruningRecord` (tasks, history,
    config), updated after every step. With ``check=True`` (the default) every step
    runs the pruned model once on ``example_inputs`` and raises
    :class:`cut_plugin.checks.TransformCheckError` if it crashes or changes a task's
    output shape. A ``torch.compile``'d or ``DataParallel`` model is unwrapped (warning).

    ``scores``: per-task element scores of this model (``score_tasks`` with the
    config's criterion, or ``pruner.importance.scores`` of an earlier pruner of it)
    used instead of scoring ``data`` again, e.g. to prune one model at several ratios.
    With ``criterion="activation"`` they are channel scores
    (:func:`cut_plugin.channel_scoring.score_channels`).
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
        check: bool = True,
        round_to: int | None = None,
        scores: Mapping[str, Mapping[str, Tensor]] | None = None,
        **kwargs: Any,
    ) -> None:
        model = unwrap_model(model, operation="CUTPruner")
        ratio = check_ratio(pruning_ratio)
        options, tp_kwargs = split_options(kwargs)
        if round_to is not None:
            tp_kwargs["round_to"] = _check_round_to(round_to)
        if "importance" in tp_kwargs:
            raise TypeError(
                "CUTPruner builds its own CUTImportance; use tp.pruner.BasePruner for another importance"
            )
        example = as_example_inputs(example_inputs, model)
        selected_tasks = check_tasks(tasks)
        cut = resolve_config(config, options, tasks=selected_tasks)
        compact = select_tasks(model, selected_tasks, task_names=task_names, example_inputs=example)
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
        # Self-attention loses whole heads (unless the caller set num_heads themselves).
        heads = head_options(compact, ratio, tp_kwargs)
        tp_kwargs.update(heads)
        self._plan_heads = bool(heads)
        ignored = list(tp_kwargs.pop("ignored_layers", None) or [])
        ignored += [
            m for m in protected_layers(compact, example) if all(m is not k for k in ignored)
        ]
        importance = CUTImportance(
            losses, tasks=selected_tasks, config=cut, keep_ratio=1.0 - ratio, progress=progress
        )
        self.data = data
        self.max_batches = max_batches
        if scores is None:
            importance.estimate(compact, data, max_batches)
        else:
            importance.use_scores(compact, scores, example)
        tp_kwargs = saturating_kwargs(tp_kwargs)
        was_training = model.training
        # Torch-Pruning traces the graph through autograd: a frozen layer would be invisible
        # (its BatchNorm pruned alone), so every parameter requires grad while it traces.
        with scoring_state(compact):
            super().__init__(
                compact,
                example,
                importance,
                pruning_ratio=ratio,
                ignored_layers=ignored,
                **tp_kwargs,
            )
        protect_mha(self)
        importance.num_heads = self.num_heads  # shared: Torch-Pruning lowers it per step
        compact.train(was_training)
        self.check = check
        self._example = example
        self._shapes = {t: v.shape for t, v in outputs_of(compact, example).items()}

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
        importance.head_keep = (
            plan_head_step(self, self.current_step + 1) if self._plan_heads else {}
        )
        if not interactive:
            with importance.keeping(keep):
                result = super().step(False)
            sync_heads(self.model)
            self._record_history()
            self._check_step()
            return result

        def groups() -> Any:
            with importance.keeping(keep):
                yield from super(CUTPruner, self).step(True)
            sync_heads(self.model)
            self._record_history()
            self._check_step()

        return groups()

    def _check_step(self) -> None:
        """The pruned model must run on the example inputs and keep every task's output shape."""
        if not self.check:
            return
        fix = (
            FROZEN_ATTRIBUTE_FIX
            if isinstance(self.model, fx.GraphModule)
            else "pass the layer that breaks in ignored_layers=[...] (CUTPruner(..., check=False) "
            "skips this check)"
        )
        check_shapes("CUTPruner.step", self.model, self._example, self._shapes, fix=fix)

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
    pruning_ratio: float | None = None,
    granularity: str = "channel",
    config: CUTConfig | Mapping[str, Any] | None = None,
    max_batches: int | None = None,
    task_names: Sequence[str] | None = None,
    progress: bool = True,
    check: bool = True,
    round_to: int | None = None,
    target_macs: float | int | None = None,
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
    ``calibrate``). ``criterion="activation"`` (channel scores from activation
    gradients, :mod:`cut_plugin.channel_scoring`) is for ``granularity="channel"``
    only; with ``"weight"`` it raises.

    ``round_to=k`` (channels only): every pruned layer keeps a multiple of ``k``
    channels, for CPU kernels that run such widths faster (see :class:`CUTPruner`);
    ``None`` (default) keeps the exact count.

    ``target_macs`` (channels only, instead of ``pruning_ratio``): the compact model's
    budget, a fraction in (0, 1] of the MACs of the dense model serving ``tasks`` or
    an int MAC count. The tasks are scored once; the smallest ratio whose compact
    model fits is searched (:func:`adapters.torch_pruning.search_ratio`), so the
    result never exceeds the budget. With ``global_pruning=True`` this is how to
    compare with a per-layer method at equal MACs.

    Checked (``check=True``, one forward on ``example_inputs``): every step keeps each
    task's output shape, and at ``pruning_ratio=0`` the result equals the original
    on ``tasks``; a failure raises :class:`cut_plugin.checks.TransformCheckError`.
    A ``torch.compile``'d or ``DataParallel`` model is unwrapped (with a warning).
    """
    model = unwrap_model(model, operation="cut_prune")
    if (pruning_ratio is None) == (target_macs is None):
        raise TypeError(
            "cut_prune needs exactly one of pruning_ratio (a fraction of channels or weights) "
            f"and target_macs (a MAC budget); got pruning_ratio={pruning_ratio!r}, "
            f"target_macs={target_macs!r}"
        )
    if target_macs is not None:
        if granularity != "channel":
            raise TypeError(
                "target_macs budgets the compact model's MACs: it applies to granularity="
                "'channel' only (zeroed weights do not reduce dense MACs); use pruning_ratio"
            )
        return _prune_to_macs(
            model, example_inputs, target_macs, tasks=tasks, losses=losses, data=data,
            config=config, max_batches=max_batches, task_names=task_names, progress=progress,
            check=check, round_to=round_to, **kwargs,
        )  # fmt: skip
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
            check=check,
            round_to=round_to,
            **kwargs,
        )
        for _ in range(pruner.iterative_steps):
            pruner.step()
        if check and pruner.pruning_ratio == 0.0:
            check_unpruned(model, pruner.model, example_inputs, tasks, task_names)
        return pruner.model
    if granularity == "weight":
        options, _ = split_options(kwargs)
        criterion = resolve_config(config, options, tasks=check_tasks(tasks)).criterion
        check_element_criterion(criterion, route="cut_prune(granularity='weight')")
        if round_to is not None:
            raise TypeError(
                "round_to rounds channel counts: it applies to granularity='channel' only; "
                "drop it for granularity='weight'"
            )
        return prune_weights(
            model, example_inputs, tasks=tasks, losses=losses, data=data,
            pruning_ratio=pruning_ratio, config=config, max_batches=max_batches,
            task_names=task_names, progress=progress, check=check, **kwargs,
        )  # fmt: skip
    raise ValueError(f"granularity must be 'channel' or 'weight', got {granularity!r}")


def _prune_to_macs(
    model: nn.Module,
    example_inputs: Inputs,
    target_macs: float | int,
    *,
    tasks: Sequence[str],
    losses: Mapping[str, Loss],
    data: Iterable[Any],
    config: CUTConfig | Mapping[str, Any] | None,
    max_batches: int | None,
    task_names: Sequence[str] | None,
    **kwargs: Any,
) -> nn.Module:
    """``cut_prune`` at the smallest ratio whose compact model fits ``target_macs``."""
    check_target_macs(target_macs)
    selected_tasks = check_tasks(tasks)
    options, _ = split_options(kwargs)
    cut = resolve_config(config, options, tasks=selected_tasks)
    example = as_example_inputs(example_inputs, model)
    selected = select_tasks(model, selected_tasks, task_names=task_names, example_inputs=example)
    budget = macs_budget(target_macs, count_macs(selected, example)[0])
    common: dict[str, Any] = {"tasks": selected_tasks, "max_batches": max_batches,
                              "progress": kwargs.get("progress", True), "task_names": task_names}  # fmt: skip
    task_losses = check_losses(losses, selected_tasks)
    scores = (
        score_channels(selected, data, task_losses, **common)
        if cut.criterion in CHANNEL_CRITERIA
        else score_tasks(selected, data, task_losses, criterion=cut.criterion, **common)
    )
    check = kwargs.pop("check", True)
    quiet = {**kwargs, "progress": False, "check": False}  # the chosen model is checked below

    def prune(ratio: float) -> nn.Module:
        pruner = CUTPruner(
            model, example, tasks=selected_tasks, losses=losses, data=data, pruning_ratio=ratio,
            config=config, max_batches=max_batches, task_names=task_names, scores=scores, **quiet,
        )  # fmt: skip
        for _ in range(pruner.iterative_steps):
            pruner.step()
        return pruner.model

    compact, _, _ = search_ratio(prune, lambda m: count_macs(m, example)[0], budget)
    if check:
        shapes = {t: v.shape for t, v in outputs_of(selected, example, task_names).items()}
        check_shapes("cut_prune(target_macs=...)", compact, example, shapes, task_names=task_names,
                     fix="pass the layer that breaks in ignored_layers=[...] (check=False skips "
                     "this check)")  # fmt: skip
    return compact


def _check_round_to(value: Any) -> int:
    """``round_to`` as a positive int, or raise naming the value and the fix."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"round_to must be a positive int or None, got {value!r}")
    if value < 1:
        raise ValueError(
            f"round_to must be >= 1 (every layer keeps a multiple of it), got {value}; "
            "pass None for exact channel counts"
        )
    return value
