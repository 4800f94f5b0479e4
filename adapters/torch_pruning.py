"""CUT as a Torch-Pruning importance and pruner: structured pruning with a real speed-up.

The paper's masks are unstructured (no dense speed-up). Here CUT's per-task
scores are reduced to channels over every coupled layer of a Torch-Pruning
group, and the tasks' verdicts on each channel are fused, so Torch-Pruning's
dependency graph removes whole channels physically::

    import adapters.torch_pruning as atp
    compact = atp.cut_prune(model, (x,), tasks=["seg", "depth"], losses=losses,
                            data=loader, pruning_ratio=0.5)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from adapters.baselines import BASELINES, baseline_prune, count_macs
from adapters.compaction import (
    HISTORY,
    IN_HANDLERS,
    OUT_HANDLERS,
    TASK_NAMES,
    TASKS,
    align_masks,
    as_example_inputs,
    load_pruned,
    output_layers,
    protected_layers,
    prune_by_masks,
    pruning_history,
    save_pruned,
    to_copy_kwargs,
)
from adapters.merged_pruning import PRUNED_GROUPS, prune_merged
from cut_plugin import apply_masks, cut_masks, score_tasks, select_tasks
from cut_plugin.batching import Inputs, Loss, check_losses, check_ratio, check_tasks
from cut_plugin.fusion import Rule, check_rule, rank_channels
from cut_plugin.scoring import Criterion, check_criterion

__all__ = [
    "BASELINES",
    "PRUNED_GROUPS",
    "CUTImportance",
    "CUTPruner",
    "align_masks",
    "baseline_prune",
    "count_macs",
    "cut_prune",
    "load_pruned",
    "output_layers",
    "prune_by_masks",
    "prune_merged",
    "pruning_history",
    "save_pruned",
]


class CUTImportance(tp.importance.Importance):
    """CUT's fused per-task importance of each channel of a Torch-Pruning group.

    Per task t, the element scores of ``score_tasks`` (``taylor``: Σ|w·∂L_t/∂w|)
    are summed per root channel over every coupled layer of the group: conv/linear
    output rows and biases, consumers' input columns, BatchNorm scale and shift
    (Torch-Pruning's own Taylor importance skips BatchNorm). They are normalised by
    the task's total score over its whole subnetwork, then fused over the tasks
    that use the group (:func:`cut_plugin.rank_channels`): with ``rule="vote"`` a
    channel kept by fewer than ``votes`` tasks (each keeping its top
    ``keep_ratio``) ranks below every channel kept by ``votes`` or more.

    Use ``estimate(model, batches)`` (or ``accumulate`` per batch) before pruning;
    scores are keyed by parameter name, so two ``accumulate`` calls add up.
    """

    def __init__(
        self,
        losses: Mapping[str, Loss],
        *,
        tasks: Sequence[str] | None = None,
        criterion: Criterion = "taylor",
        rule: Rule = "vote",
        votes: int = 2,
        keep_ratio: float = 0.5,
        weights: Sequence[float] | None = None,
        task_names: Sequence[str] | None = None,
        progress: bool = True,
    ) -> None:
        self.tasks = check_tasks(tasks) if tasks is not None else list(losses)
        self.losses = check_losses(losses, self.tasks)
        self.criterion = check_criterion(criterion)
        self.rule, self.votes = check_rule(rule, votes)
        if (
            isinstance(keep_ratio, bool)
            or not isinstance(keep_ratio, int | float)
            or not 0 < keep_ratio <= 1
        ):
            raise ValueError(
                f"keep_ratio must be in (0, 1] (the fraction of a group's channels each task keeps), "
                f"got {keep_ratio!r}"
            )
        self.keep_ratio = float(keep_ratio)
        self.weights = weights
        self.task_names = task_names
        self.progress = progress
        self.scores: dict[str, dict[str, Tensor]] = {}
        self._names: dict[int, str] = {}
        self._params: dict[str, nn.Parameter] = {}

    def reset(self) -> None:
        """Forget every accumulated score."""
        self.scores = {}

    def _bind(self, model: nn.Module) -> None:
        self._params = dict(model.named_parameters())
        self._names = {id(p): n for n, p in self._params.items()}

    def accumulate(self, model: nn.Module, inputs: Inputs, targets: Mapping[str, Tensor]) -> None:
        """Add one batch's per-task scores to the accumulated ones."""
        batch = score_tasks(
            model,
            [(inputs, targets)],
            self.losses,
            tasks=self.tasks,
            criterion=self.criterion,  # type: ignore[arg-type]
            progress=False,
            task_names=self.task_names,
        )
        self._bind(model)
        for task, scores in batch.items():
            acc = self.scores.setdefault(task, {})
            for name, value in scores.items():
                if name in acc and self.criterion != "magnitude" and acc[name].shape == value.shape:
                    acc[name] += value
                else:
                    acc[name] = value

    def estimate(
        self, model: nn.Module, batches: Iterable[Any], max_batches: int | None = None
    ) -> None:
        """Score ``model`` on ``batches`` from scratch (one forward per batch, one backward per task)."""
        self.scores = score_tasks(
            model,
            batches,
            self.losses,
            tasks=self.tasks,
            criterion=self.criterion,  # type: ignore[arg-type]
            max_batches=max_batches,
            progress=self.progress,
            task_names=self.task_names,
        )
        self._bind(model)

    def is_stale(self, model: nn.Module) -> bool:
        """True when no scores exist or they no longer match ``model``'s parameters' shapes."""
        if not self.scores:
            return True
        params = dict(model.named_parameters())
        return any(
            name not in params or params[name].shape != value.shape
            for scores in self.scores.values()
            for name, value in scores.items()
        )

    def _layer_scores(self, task: str, layer: nn.Module, attr: str) -> Tensor | None:
        param = getattr(layer, attr, None)
        name = self._names.get(id(param)) if param is not None else None
        if name is None:
            return None
        value = self.scores[task].get(name)
        if value is not None and value.shape != param.shape:  # type: ignore[union-attr]
            raise RuntimeError(
                f"CUTImportance scores of {name!r} are stale ({tuple(value.shape)} vs "
                f"{tuple(param.shape)}); call estimate(model, batches) after pruning"  # type: ignore[union-attr]
            )
        return value

    def _channel_scores(self, task: str, group: Any) -> Tensor | None:
        """``(num_root_channels,)`` task scores summed over the group's coupled layers, or None."""
        total: Tensor | None = None
        for i, (dep, idxs) in enumerate(group):
            root_idxs = group[i].root_idxs
            if any(r is None for r in root_idxs):
                continue
            layer, handler = dep.target.module, dep.handler
            idxs = list(idxs)
            local: Tensor | None = None
            weight = self._layer_scores(task, layer, "weight")
            transposed = bool(getattr(layer, "transposed", False))
            if handler in OUT_HANDLERS:
                if weight is not None:
                    local = (
                        (weight.transpose(0, 1) if transposed else weight)[idxs].flatten(1).sum(1)
                    )
                bias = self._layer_scores(task, layer, "bias")
                if bias is not None:
                    local = bias[idxs] if local is None else local + bias[idxs]
            elif handler in IN_HANDLERS:
                if weight is not None and getattr(layer, "groups", 1) == 1:
                    local = (
                        (weight if transposed else weight.transpose(0, 1)).flatten(1).sum(1)[idxs]
                    )
            elif handler in (tp.prune_batchnorm_out_channels, tp.prune_layernorm_out_channels):
                for attr in ("weight", "bias"):
                    value = self._layer_scores(task, layer, attr)
                    if value is not None:
                        local = value[idxs] if local is None else local + value[idxs]
            if local is None:
                continue
            if total is None:
                total = torch.zeros(len(group[0].idxs), dtype=torch.float32, device=local.device)
            total.scatter_add_(0, torch.tensor(list(root_idxs), device=local.device), local.float())
        return total

    @torch.no_grad()
    def __call__(self, group: Any) -> Tensor | None:
        """One importance per root channel of ``group`` (None: no selected task uses it)."""
        if not self.scores:
            raise RuntimeError(
                "CUTImportance has no scores; call estimate(model, batches) before pruning"
            )
        used, rows, totals = [], [], []
        for position, task in enumerate(self.tasks):
            channel = self._channel_scores(task, group)
            if channel is not None:
                used.append(position)
                rows.append(channel)
                totals.append(sum(float(v.sum()) for v in self.scores[task].values()))
        if not rows:
            return None
        weights = None
        if self.rule == "weighted":
            if self.weights is None or len(self.weights) != len(self.tasks):
                raise ValueError(
                    f"rule 'weighted' needs weights=[...], one per task of {self.tasks}"
                )
            weights = [float(self.weights[i]) for i in used]
        return rank_channels(
            torch.stack(rows),
            torch.tensor(totals, device=rows[0].device),
            rule=self.rule,
            votes=self.votes,
            keep_ratio=self.keep_ratio,
            weights=weights,  # type: ignore[arg-type]
        )


class CUTPruner(tp.pruner.BasePruner):
    """A Torch-Pruning pruner that makes a compact model serving only ``tasks``.

    On construction: the model is copied with only ``tasks`` (``select_tasks``;
    the caller's model is never changed), every task's output layer is added to
    ``ignored_layers`` (output widths never change), and :class:`CUTImportance` is
    estimated on ``data``. ``step()`` prunes (re-estimating the scores first when
    an earlier step changed the model). The compact model is ``pruner.model``.

    Torch-Pruning options pass through: ``global_pruning``, ``iterative_steps``,
    ``pruning_ratio_dict``, ``round_to``, ``max_pruning_ratio``, ``ignored_layers``...
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
        rule: Rule = "vote",
        votes: int = 2,
        criterion: Criterion = "taylor",
        max_batches: int | None = None,
        task_names: Sequence[str] | None = None,
        progress: bool = True,
        **tp_kwargs: Any,
    ) -> None:
        ratio = check_ratio(pruning_ratio)
        if "importance" in tp_kwargs:
            raise TypeError(
                "CUTPruner builds its own CUTImportance; use tp.pruner.BasePruner for another importance"
            )
        example = as_example_inputs(example_inputs, model)
        selected_tasks = check_tasks(tasks)
        compact = select_tasks(model, selected_tasks, task_names=task_names)
        check_losses(losses, selected_tasks)
        setattr(compact, TASKS, selected_tasks)
        setattr(compact, TASK_NAMES, list(task_names) if task_names is not None else None)
        self._prior_history = pruning_history(model)
        setattr(compact, HISTORY, list(self._prior_history))
        tp_kwargs = to_copy_kwargs(model, compact, tp_kwargs)
        ignored = list(tp_kwargs.pop("ignored_layers", None) or [])
        ignored += [
            m for m in protected_layers(compact, example) if all(m is not k for k in ignored)
        ]
        importance = CUTImportance(
            losses,
            tasks=selected_tasks,
            criterion=criterion,
            rule=rule,
            votes=votes,
            keep_ratio=1.0 - ratio,
            progress=progress,
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
        importance.keep_ratio = min(1.0, max(0.0, (1.0 - step_ratio) / max(1.0 - done, 1e-12)))
        result = super().step(interactive)
        if not interactive:
            self._record_history()
            return result

        def groups() -> Any:
            yield from result
            self._record_history()

        return groups()

    def _record_history(self) -> None:
        history = self._prior_history + [tuple(h) for h in self.pruning_history()]
        setattr(self.model, HISTORY, history)


def cut_prune(
    model: nn.Module,
    example_inputs: Inputs,
    *,
    tasks: Sequence[str],
    losses: Mapping[str, Loss],
    data: Iterable[Any],
    pruning_ratio: float,
    granularity: str = "channel",
    rule: Rule = "vote",
    votes: int = 2,
    criterion: Criterion = "taylor",
    max_batches: int | None = None,
    task_names: Sequence[str] | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """One call: a new compact model serving only ``tasks`` (the caller's model untouched).

    ``granularity="channel"`` removes ``pruning_ratio`` of the channels physically
    (:class:`CUTPruner`, all steps run; ``kwargs`` go to Torch-Pruning).
    ``granularity="weight"`` gives the paper's unstructured masks (``cut_masks``;
    ``kwargs`` go there): the returned model has the masked weights zeroed and its
    masks in ``model.cut_pam_masks``, to pass to ``finetune(masks=...)``.
    """
    if granularity == "channel":
        pruner = CUTPruner(
            model,
            example_inputs,
            tasks=tasks,
            losses=losses,
            data=data,
            pruning_ratio=pruning_ratio,
            rule=rule,
            votes=votes,
            criterion=criterion,
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
        selected = select_tasks(model, tasks, task_names=task_names)
        scores = score_tasks(
            selected,
            data,
            losses,
            tasks=tasks,
            criterion=criterion,
            max_batches=max_batches,
            progress=progress,
        )
        masks = cut_masks(selected, scores, pruning_ratio=ratio, rule=rule, votes=votes, **kwargs)
        pruned = apply_masks(selected, masks, inplace=True)
        pruned.cut_pam_masks = masks  # type: ignore[assignment]
        setattr(pruned, TASKS, check_tasks(tasks))
        setattr(pruned, TASK_NAMES, list(task_names) if task_names is not None else None)
        setattr(pruned, HISTORY, pruning_history(model))
        return pruned
    raise ValueError(f"granularity must be 'channel' or 'weight', got {granularity!r}")
