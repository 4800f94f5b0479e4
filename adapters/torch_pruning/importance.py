"""CUT as a Torch-Pruning importance: per-task channel scores fused over the tasks.

Re-exported by :mod:`adapters.torch_pruning`; import from there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from adapters.torch_pruning.compaction import IN_HANDLERS, OUT_HANDLERS
from adapters.torch_pruning.protection import output_layers
from cut_plugin import score_tasks
from cut_plugin.channel_scoring import channel_layers, output_width, score_channels
from cut_plugin.config import CUTConfig, resolve_config
from cut_plugin.fusion import check_keep_ratio, rank_channels
from cut_plugin.scoring import CHANNEL_CRITERIA
from cut_plugin.vocabulary import Inputs, Loss, check_losses, check_tasks

__all__ = ["CUTImportance"]


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

    ``criterion="activation"`` (opt-in, approximate, no weight gradient) scores channels
    (:func:`cut_plugin.channel_scoring.score_channels`, ``{task: {module_name:
    Tensor(out_channels,)}}``); a group's channel scores the sum over the conv/linear
    layers whose *output* channels the group prunes (several in a residual group).

    Use ``estimate(model, batches)`` (or ``accumulate`` per batch) before pruning;
    scores are keyed by parameter name, so two ``accumulate`` calls add up.

    Options: ``config=CUTConfig(...)`` or its fields as keywords (``criterion``,
    ``rule``, ``votes``, ``weights`` — a dict, or a list in the order of ``tasks`` —
    and ``calibrate``: with verdict rules each group's verdict keeps exactly
    ``keep_ratio`` of its channels, so the rule, not Torch-Pruning's cut, decides).
    Scores of different groups are made comparable (:func:`cut_plugin.fusion.
    group_normalise`), so ``global_pruning=True`` allocates by importance.

    Attention: given ``num_heads={qkv_linear: heads}`` (the dict passed to the
    pruner; Torch-Pruning updates it in place after each step), a group holding
    those layers' output channels is ranked by whole heads: each task's channel
    scores are summed per head and the tasks' verdicts fused over heads, then every
    channel of a head gets its head's importance (Torch-Pruning averages per head).

    Guards: ``estimate``/``accumulate`` record the task output layers
    (:func:`adapters.torch_pruning.output_layers` on the first batch); a group that
    would change one's width raises (pass them as ``ignored_layers``). Scores are
    looked up by parameter name and checked against the parameter's shape, so a
    pruned model with old scores raises rather than use them.
    """

    _step_keep_ratio: float | None = None

    @property
    def criterion(self) -> str:
        return self.config.criterion

    @property
    def rule(self) -> str:
        return self.config.rule

    @property
    def votes(self) -> int:
        return self.config.votes

    @property
    def weights(self) -> Mapping[str, float] | None:
        return self.config.weights

    @contextmanager
    def keeping(self, keep_ratio: float) -> Iterator[None]:
        """Within the block, each task keeps ``keep_ratio`` of a group (an iterative step's share)."""
        previous: float | None = self._step_keep_ratio
        self._step_keep_ratio = check_keep_ratio(keep_ratio, allow_zero=True)
        try:
            yield
        finally:
            self._step_keep_ratio = previous

    def __init__(
        self,
        losses: Mapping[str, Loss],
        *,
        tasks: Sequence[str] | None = None,
        config: CUTConfig | Mapping[str, Any] | None = None,
        keep_ratio: float = 0.5,
        task_names: Sequence[str] | None = None,
        progress: bool = True,
        num_heads: Mapping[nn.Module, int] | None = None,
        **options: Any,
    ) -> None:
        self.tasks = check_tasks(tasks) if tasks is not None else list(losses)
        self.losses = check_losses(losses, self.tasks)
        self.config = resolve_config(config, options, tasks=self.tasks)
        self.keep_ratio = check_keep_ratio(keep_ratio)
        self._step_keep_ratio = None
        self.task_names = task_names
        self.progress = progress
        self.scores: dict[str, dict[str, Tensor]] = {}
        # Kept by reference: Torch-Pruning lowers the counts in place after a step.
        self.num_heads: Mapping[nn.Module, int] = num_heads if num_heads is not None else {}
        self.head_keep: dict[nn.Module, int] = {}
        self._slots: dict[tuple[int, str], str] = {}
        self._outputs: dict[int, tuple[str, str]] = {}
        self._layers: dict[int, str] = {}

    @property
    def channel_mode(self) -> bool:
        """True when the criterion scores channels (``activation``), not elements."""
        return self.config.criterion in CHANNEL_CRITERIA

    def _score(
        self, model: nn.Module, batches: Any, **options: Any
    ) -> dict[str, dict[str, Tensor]]:
        """The config's criterion on ``batches``: element scores, or channel scores."""
        common = {"tasks": self.tasks, "task_names": self.task_names, "progress": False, **options}
        if self.channel_mode:
            return score_channels(model, batches, self.losses, **common)
        return score_tasks(model, batches, self.losses, criterion=self.config.criterion, **common)

    def reset(self) -> None:
        """Forget every accumulated score."""
        self.scores = {}

    @property
    def _names(self) -> dict[tuple[int, str], str]:
        """The parameter names by (module id, attribute); copy it with ``scores``."""
        return self._slots

    @_names.setter
    def _names(self, value: dict[tuple[int, str], str]) -> None:
        self._slots = value

    def _bind(self, model: nn.Module, inputs: Inputs | None = None) -> None:
        # By module and attribute, not by parameter id: a pruning step replaces the
        # parameters but keeps the modules.
        names = {id(p): n for n, p in model.named_parameters()}
        self._slots = {
            (id(m), attr): names[id(p)]
            for m in model.modules()
            for attr, p in m.named_parameters(recurse=False)
            if id(p) in names
        }
        self._layers = {id(m): n for n, m in channel_layers(model).items()}
        if inputs is not None:
            modules = {id(m): n for n, m in model.named_modules()}
            found = output_layers(model, inputs, task_names=self.task_names)
            self._outputs = {id(m): (task, modules[id(m)]) for task, m in found.items()}

    def accumulate(self, model: nn.Module, inputs: Inputs, targets: Mapping[str, Tensor]) -> None:
        """Add one batch's per-task scores to the accumulated ones."""
        batch = self._score(model, [(inputs, targets)])
        self._bind(model, inputs)
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
        first: list[Inputs] = []

        def tap(source: Iterable[Any]) -> Iterator[Any]:
            for batch in source:
                if not first and isinstance(batch, tuple | list) and len(batch) == 2:
                    first.append(batch[0])
                yield batch

        self.scores = self._score(
            model,
            tap(batches)
            if isinstance(batches, Iterable) and not isinstance(batches, Tensor)
            else batches,
            max_batches=max_batches,
            progress=self.progress,
        )
        self._bind(model, first[0] if first else None)

    def use_scores(
        self, model: nn.Module, scores: Mapping[str, Mapping[str, Tensor]], inputs: Inputs
    ) -> None:
        """Take per-task element scores computed earlier (``score_tasks`` on ``model``'s weights).

        Checked: an entry for every task of this importance (other tasks' are ignored),
        each score named like one of ``model``'s parameters and of its shape (scores of
        another model raise).
        """
        if not isinstance(scores, Mapping) or not set(self.tasks) <= set(scores):
            got = sorted(scores) if isinstance(scores, Mapping) else type(scores).__name__
            raise ValueError(
                f"scores must be a dict with an entry for every task {self.tasks} (score_tasks' "
                f"result), got {got}"
            )
        scores = {task: scores[task] for task in self.tasks}
        shapes = self._shapes(model)
        kind = "layer's output channels" if self.channel_mode else "parameter"
        for task, per_param in scores.items():
            for name, value in per_param.items():
                if shapes.get(name) != value.shape:
                    raise ValueError(
                        f"scores[{task!r}][{name!r}] does not match this model's {kind} (shape "
                        f"{tuple(value.shape)}): score the model being pruned, not another, with "
                        f"the criterion {self.config.criterion!r}"
                    )
        self.scores = {t: {n: v.detach().clone() for n, v in s.items()} for t, s in scores.items()}
        self._bind(model, inputs)

    def is_stale(self, model: nn.Module) -> bool:
        """True when no scores exist or they no longer match ``model``'s parameters' shapes."""
        if not self.scores:
            return True
        shapes = self._shapes(model)
        return any(
            shapes.get(name) != value.shape
            for scores in self.scores.values()
            for name, value in scores.items()
        )

    def _shapes(self, model: nn.Module) -> dict[str, torch.Size]:
        """What the scores' shapes must be: per parameter, or per layer's output channels."""
        if self.channel_mode:
            return {n: torch.Size([output_width(m)]) for n, m in channel_layers(model).items()}
        return {name: p.shape for name, p in model.named_parameters()}

    def _layer_scores(self, task: str, layer: nn.Module, attr: str) -> Tensor | None:
        param = getattr(layer, attr, None)
        name = self._slots.get((id(layer), attr))
        if not isinstance(param, Tensor) or name is None:
            return None
        value = self.scores[task].get(name)
        if value is not None and value.shape != param.shape:
            raise RuntimeError(
                f"CUTImportance scores of {name!r} are stale ({tuple(value.shape)} vs "
                f"{tuple(param.shape)} now): the model was pruned since they were estimated; "
                "call estimate(model, batches) again before the next step"
            )
        return value

    def _channel_scores(self, task: str, group: Any) -> Tensor | None:
        """``(num_root_channels,)`` task scores summed over the group's coupled layers, or None."""
        if self.channel_mode:
            return self._output_channel_scores(task, group)
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
                width = weight.shape[0 if transposed else 1] if weight is not None else 0
                if (
                    weight is not None
                    and getattr(layer, "groups", 1) == 1
                    and max(idxs, default=-1) >= width
                ):
                    raise RuntimeError(
                        f"Torch-Pruning mapped input channel {max(idxs)} onto {dep.target.name}, "
                        f"which has {width}: its graph mis-indexes this model (Torch-Pruning 1.6.1 "
                        "does so after an uneven torch.split); split into equal parts, or list the "
                        "layer in ignored_layers"
                    )
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

    def _output_channel_scores(self, task: str, group: Any) -> Tensor | None:
        """Channel criterion: the sum of the scores of the layers whose outputs the group prunes."""
        total: Tensor | None = None
        for i, (dep, idxs) in enumerate(group):
            root_idxs = group[i].root_idxs
            if dep.handler not in OUT_HANDLERS or any(r is None for r in root_idxs):
                continue
            layer = dep.target.module
            name = self._layers.get(id(layer), "")
            if (value := self.scores[task].get(name)) is None:
                continue
            if value.shape[0] != output_width(layer):
                raise RuntimeError(
                    f"CUTImportance channel scores of {name!r} are stale ({value.shape[0]} vs "
                    f"{output_width(layer)} channels now): the model was pruned since they were "
                    "estimated; call estimate(model, batches) again before the next step"
                )
            local = value[list(idxs)].float()
            if total is None:
                total = torch.zeros(len(group[0].idxs), dtype=torch.float32, device=local.device)
            total.scatter_add_(0, torch.tensor(list(root_idxs), device=local.device), local)
        return total

    @torch.no_grad()
    def __call__(self, group: Any) -> Tensor | None:
        """One importance per root channel of ``group`` (None: no selected task uses it)."""
        if not self.scores:
            raise RuntimeError(
                "CUTImportance has no scores; call estimate(model, batches) before pruning"
            )
        self._check_outputs(group)
        used, rows, totals = [], [], []
        for position, task in enumerate(self.tasks):
            channel = self._channel_scores(task, group)
            if channel is not None:
                used.append(position)
                rows.append(channel)
                totals.append(sum(float(v.sum()) for v in self.scores[task].values()))
        if not rows:
            return None
        keep = self.keep_ratio if self._step_keep_ratio is None else self._step_keep_ratio
        scores = torch.stack(rows)
        heads, head_keep = self._heads_of(group, scores.shape[1])
        if heads > 1:
            # Whole heads: the tasks vote on heads, each scored by the sum over its channels.
            scores = scores.view(len(rows), heads, -1).sum(2)
            keep = head_keep / heads if head_keep is not None else keep
        ranked = rank_channels(
            scores,
            torch.tensor(totals, device=rows[0].device),
            rule=self.config.rule,
            votes=self.config.votes,
            keep_ratio=keep,
            weights=self.config.task_weights([self.tasks[i] for i in used]),
            calibrate=self.config.calibrate,
        )
        return ranked.repeat_interleave(len(group[0].idxs) // heads) if heads > 1 else ranked

    def _heads_of(self, group: Any, channels: int) -> tuple[int, int | None]:
        """(head count, heads to keep or None) of an attention group; (1, None) otherwise."""
        layers = [
            dep.target.module
            for dep, _ in group
            if dep.handler in OUT_HANDLERS and dep.target.module in self.num_heads
        ]
        if not layers:
            return 1, None
        heads = max(int(self.num_heads[m]) for m in layers)
        if heads <= 1 or channels % heads:
            return 1, None
        keep = [self.head_keep[m] for m in layers if m in self.head_keep]
        return heads, (min(max(keep), heads) if keep else None)

    def _check_outputs(self, group: Any) -> None:
        """Raise when ``group`` would prune a task output layer's output channels."""
        for dep, _ in group:
            found = self._outputs.get(id(dep.target.module))
            if found is not None and dep.handler in OUT_HANDLERS:
                task, name = found
                raise ValueError(
                    f"CUTImportance was given a group that prunes {name!r}, the output layer of "
                    f"task {task!r}: its output width would change. Protect the task outputs: "
                    "ignored_layers=list(atp.output_layers(model, example_inputs).values()) "
                    "(import adapters.torch_pruning as atp), or use atp.CUTPruner / atp.cut_prune, "
                    "which do so"
                )
