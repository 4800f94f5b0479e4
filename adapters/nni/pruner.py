"""CUT as an NNI 3.0 pruner (``config_list`` picks layers and ratios, CUT picks blocks).

Re-exported by :mod:`adapters.nni`; import from there.
"""

from __future__ import annotations

import logging
import warnings
from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

with warnings.catch_warnings():
    # NNI 3.0 on current torch/numpy warns at import about its own internals.
    warnings.simplefilter("ignore")
    from nni.compression.base.compressor import Pruner
    from nni.compression.base.target_space import PruningTargetSpace, TargetType
    from nni.compression.base.wrapper import ModuleWrapper
    from nni.compression.pruning.tools import generate_sparsity
    from nni.compression.utils import Evaluator

from adapters.nni.config import check_config_list
from adapters.nni.masks import plain_copy, unwrapped
from adapters.nni.metrics import space_metrics
from adapters.nni.protection import add_norm_masks, first_inputs, materialise, protect_configs
from cut_plugin import score_tasks, select_tasks
from cut_plugin.config import CUTConfig, resolve_config
from cut_plugin.vocabulary import Loss, check_losses, check_tasks

__all__ = ["CUTPruner"]


class _TestedWithCUT(logging.Filter):
    """Drops NNI's "Compatibility not tested with pruner type CUTPruner": tests/test_nni.py tests it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pruner type CUTPruner" not in record.getMessage()


logging.getLogger("nni.compression.pruning.scheduled_pruner").addFilter(_TestedWithCUT())

NNIMasks = dict[str, dict[str, Tensor]]
TaskData = dict[str, dict[str, dict[str, Tensor]]]


def _is_active(space: PruningTargetSpace) -> bool:
    return (
        space.type is TargetType.PARAMETER
        and space.target is not None
        and space.sparse_ratio is not None
    )


class CUTPruner(Pruner):
    """CUT (``rule="vote"``) or DiSparse (``rule="any"``) as an NNI 3.0 ``Pruner``.

    CUT (the paper, README "How CUT differs from the paper"): each selected task t scores every weight by
    ``Σ_batches |w ⊙ ∂L_t/∂w|`` on the pre-trained weights, normalised by its total;
    each task keeps its top blocks and a block shared by several tasks survives when
    at least ``min(votes, #tasks using it)`` of them keep it (``any``: one task,
    DiSparse; ``all``; or score rules ``mean``/``max``/``weighted``).

    The three stages of NNI's pruners: ``_collect_data`` scores the tasks
    (:func:`cut_plugin.score_tasks`), ``_calculate_metrics`` fuses them into one
    metric per block (:func:`adapters.nni.metrics.unit_metrics`), ``_generate_sparsity``
    is NNI's ``generate_sparsity``. So ``config_list`` means what it means for NNI's
    own pruners: ``op_types``/``op_names``/``op_names_re``/``exclude_op_*`` pick the
    layers, ``sparse_ratio`` (clipped by ``min``/``max_sparse_ratio``) the fraction
    masked per layer, ``global_group_id`` ranks a group of layers together,
    ``dependency_group_id`` gives a group of layers one channel mask; biases follow
    their weight's output channels. ``granularity`` is ``"default"`` (element-wise,
    as the paper) or ``"out_channel"``.

    The model is **not** wrapped in place (unlike NNI's pruners, but as every function
    of this project): ``pruner.bound_model`` is a wrapped copy — a ``select_tasks``
    copy holding only ``tasks`` when they are given. ``inplace=True`` wraps ``model``
    itself as NNI's pruners do (``tasks`` then only restricts the scoring).

    Data: ``data`` batches ``(inputs, {task: target})`` with ``losses`` ``{task:
    loss_fn}``, scored again at each mask generation. Without ``data``, an NNI
    ``evaluator`` (``TorchEvaluator``) whose training loop feeds such batches: like
    NNI's ``TaylorPruner``, ``compress()`` trains ``training_steps`` steps, records
    the batches (``evaluator.patch_loss``) and scores them on the weights reached.
    Inside ``LinearPruner``/``AGPPruner`` (they need an evaluator) the masks are
    regenerated every ``interval_steps`` on the current weights, with ``data`` or
    the batches of the last interval.

    Args:
        model: a multi-task model returning ``{task: Tensor}`` (or a tuple named by
            ``task_names``); not changed unless ``inplace=True``.
        config_list: NNI's config list (legacy keys are translated as NNI does).
        losses: ``{task: loss_fn(output, target) -> scalar}``.
        data: ``(inputs, {task: target})`` batches; None with an ``evaluator``.
        tasks: the tasks to keep (default: every task the model returns).
        config: a :class:`cut_plugin.CUTConfig` (criterion, rule, votes, weights,
            calibrate), or the same options as keywords (``rule="any"``: DiSparse).
        evaluator: an NNI ``Evaluator``; needed inside ``LinearPruner``/``AGPPruner``.
        max_batches: batches scored per mask generation (None: all of ``data``).
        training_steps: evaluator steps ``compress()`` trains without ``data``
            (default ``max_batches``, else 50 — the paper's ~50 mini-batches).
        existed_wrappers: NNI's, for ``CUTPruner.from_compressor(...)`` (wraps in place).
        protect_outputs: leave every task's output layer out of the config list's targets
            (found by :func:`adapters.torch_pruning.output_layers` on ``example_inputs``):
            masking its rows would make a task's logit constantly 0. False: prune them too.
        example_inputs: for finding the output layers and each conv's BatchNorm (default:
            the inputs of ``data``'s first batch; with an evaluator alone, neither is done).

    Implementation notes:
    - Scores are taken through the wrapped model, so already-masked weights score 0
      and stay masked as a schedule raises the ratio.
    - BatchNorm layers are wrapped too (``sparse_ratio`` 0, never scored): each mask
      generation masks the BatchNorm scale and shift of every channel ``speedup``
      removes, so ``compress()``'s masks and masked model equal the compact model.
    - Verdict rules calibrate the per-task keep fraction so the fused verdict keeps
      ``1 − sparse_ratio`` of a unit, then NNI cuts the exact count (the metric is the
      rank in the fused order); ``sparse_threshold`` is therefore not accepted.
    """

    def __init__(
        self,
        model: nn.Module,
        config_list: list[dict[str, Any]],
        *,
        losses: Mapping[str, Loss],
        data: Iterable[Any] | None = None,
        tasks: Sequence[str] | None = None,
        config: CUTConfig | Mapping[str, Any] | None = None,
        evaluator: Evaluator | None = None,
        max_batches: int | None = None,
        training_steps: int | None = None,
        task_names: Sequence[str] | None = None,
        inplace: bool = False,
        progress: bool = True,
        existed_wrappers: dict[str, ModuleWrapper] | None = None,
        protect_outputs: bool = True,
        example_inputs: Any = None,
        **options: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        configs = check_config_list(config_list)
        self.tasks = check_tasks(tasks) if tasks is not None else None
        if self.tasks is not None:
            self.losses = check_losses(losses, self.tasks)
        else:  # every task the model returns; score_tasks checks each has a loss
            self.losses = check_losses(losses, list(losses) if isinstance(losses, Mapping) else [])
        self.config = resolve_config(config, options, tasks=self.tasks)
        self.rule, self.votes = self.config.rule, self.config.votes
        self.weights, self.criterion = self.config.weights, self.config.criterion
        if evaluator is not None and not isinstance(evaluator, Evaluator):
            raise TypeError(
                f"evaluator must be an NNI Evaluator (e.g. TorchEvaluator), got {type(evaluator).__name__}"
            )
        if data is None and evaluator is None:
            raise ValueError(
                "CUTPruner needs data=[(inputs, {task: target}), ...] or an NNI evaluator whose training "
                "loop feeds such batches"
            )
        for name, value in (("max_batches", max_batches), ("training_steps", training_steps)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        self.max_batches = max_batches
        self.data = materialise(data, max_batches)
        self.training_steps = training_steps or max_batches or 50
        self.task_names = task_names
        self.progress = progress
        self._captured: deque[Any] = deque(maxlen=max_batches)
        if evaluator is not None and not evaluator._initialization_complete:
            # The optimizer NNI rebuilds was made on the caller's parameters: record
            # their names there; the copy below has the same names.
            evaluator._init_optimizer_helpers(model)
        if inplace or existed_wrappers is not None:
            bound = model
        elif self.tasks is not None:
            with unwrapped(model):
                bound = select_tasks(model, self.tasks, task_names=task_names)
        else:
            bound = plain_copy(model)
        self.example_inputs = (
            example_inputs if example_inputs is not None else first_inputs(self.data)
        )
        self.protect_outputs = protect_outputs
        self._protected: list[str] | None = None
        self._norms: set[str] = set()
        if self.example_inputs is not None and existed_wrappers is None:
            with unwrapped(bound):
                configs, self._protected, self._norms = protect_configs(
                    bound, configs, self.example_inputs, self.task_names, protect_outputs
                )
        super().__init__(bound, configs, evaluator=evaluator, existed_wrappers=existed_wrappers)
        if not any(
            _is_active(s)
            for name, spaces in self._target_spaces.items()
            if name not in self._norms
            for s in spaces.values()
        ):
            self.unwrap_model()
            types = sorted(
                {type(m).__name__ for m in bound.modules() if len(list(m.children())) == 0}
            )
            protected = (
                f" (task output layers {self._protected} are protected: "
                "protect_outputs=False prunes them)"
                if self._protected
                else ""
            )
            raise ValueError(
                f"config_list selects no layer with a sparse_ratio in this model{protected}; its layer "
                f"types are {types}"
            )
        # Read by NNI's LinearPruner/AGPPruner, which set them for a schedule.
        self.interval_steps: int = self.training_steps
        self.total_times: int | Literal["unlimited"] = 1

    def _set_default_sparse_granularity(
        self, target_space: PruningTargetSpace
    ) -> list[int] | str | None:
        """``granularity="default"``: element-wise for weights, as the paper."""
        return None if target_space.type is TargetType.PARAMETER else "per_channel"

    def _batches(self) -> Iterable[Any]:
        if self.data is not None:
            return self.data
        if not self._captured:
            raise RuntimeError(
                "CUTPruner has no batches to score: pass data=..., or run compress() with an evaluator "
                "whose training loop calls training_step(batch, ...) with (inputs, {task: target}) batches"
            )
        return list(self._captured)

    def _collect_data(self) -> TaskData:  # type: ignore[override]
        """Per-task scores of every target: ``{module_name: {target_name: {task: Tensor(target.shape)}}}``."""
        scores = score_tasks(
            self.bound_model, self._batches(), self.losses, tasks=self.tasks,
            criterion=self.criterion, max_batches=self.max_batches,  # type: ignore[arg-type]
            progress=self.progress, task_names=self.task_names,
        )  # fmt: skip
        names = {id(p): n for n, p in self.bound_model.named_parameters()}
        data: TaskData = {}
        for module_name, spaces in self._target_spaces.items():
            if module_name in self._norms:
                continue
            for target_name, space in spaces.items():
                if _is_active(space):
                    name = names.get(id(space.target))
                    data.setdefault(module_name, {})[target_name] = {
                        task: task_scores[name]
                        for task, task_scores in scores.items()
                        if name in task_scores
                    }
        if not any(per_task for targets in data.values() for per_task in targets.values()):
            raise RuntimeError(
                "no selected task's loss reaches a configured layer; is the model unwrapped? "
                "(call pruner.wrap_model() before generating masks)"
            )
        return data

    def _calculate_metrics(self, data: TaskData) -> NNIMasks:  # type: ignore[override]
        """Fused metric per block, in NNI's metric shapes: ``{module_name: {target_name: Tensor}}``."""
        totals: dict[str, float] = {}
        for targets in data.values():
            for per_task in targets.values():
                for task, value in per_task.items():
                    totals[task] = totals.get(task, 0.0) + float(value.sum())
        units: dict[tuple[str, Hashable], list[tuple[str, str]]] = {}
        for module_name, targets in data.items():
            for target_name in targets:
                space = self._target_spaces[module_name][target_name]
                if space.dependency_group_id is not None:
                    unit: tuple[str, Hashable] = ("dependency", space.dependency_group_id)
                elif space.global_group_id is not None:
                    unit = ("global", space.global_group_id)
                else:
                    unit = ("target", (module_name, target_name))
                units.setdefault(unit, []).append((module_name, target_name))
        metrics: NNIMasks = {}
        for (kind, _), members in units.items():
            for (module_name, target_name), metric in self._unit_metric(
                kind, members, data, totals
            ).items():
                device = self._target_spaces[module_name][target_name].target.device  # type: ignore[union-attr]
                metrics.setdefault(module_name, {})[target_name] = metric.to(device)
        return metrics

    def _unit_metric(
        self, kind: str, members: list[tuple[str, str]], data: TaskData, totals: Mapping[str, float]
    ) -> dict[tuple[str, str], Tensor]:
        """The metric of one unit: a target, a global group or a dependency group."""
        spaces = {key: self._target_spaces[key[0]][key[1]] for key in members}
        return space_metrics(kind, spaces, data, totals, self.config)

    def _generate_sparsity(self, metrics: NNIMasks) -> NNIMasks:
        """NNI's own ratio logic (per layer, global, dependency groups, bias alignment).

        Then BatchNorm follows its conv: a channel that ``speedup`` removes has its
        BatchNorm scale and shift masked too (found through Torch-Pruning's graph), so
        the masked model computes what the compact one computes.
        """
        spaces = {k: v for k, v in self._target_spaces.items() if k not in self._norms}
        masks = generate_sparsity(metrics, spaces)
        if self._norms:
            with unwrapped(self.bound_model):
                add_norm_masks(
                    self.bound_model, masks, self._target_spaces, self._norms,
                    self.example_inputs, self.task_names,
                )  # fmt: skip
        return masks
        from adapters.nni.masks import param_masks
        from adapters.torch_pruning import align_masks

        with unwrapped(self.bound_model):
            aligned = align_masks(
                self.bound_model,
                param_masks(masks),
                self.example_inputs,
                task_names=self.task_names,
            )
        for name in self._norms:
            for target_name, space in self._target_spaces[name].items():
                target = space.target
                if target is None:
                    continue
                keep = aligned.get(f"{name}.{target_name}")
                mask = torch.ones_like(target) if keep is None else keep.to(target.dtype)
                masks.setdefault(name, {})[target_name] = mask.to(target.device)
        return masks

    def _register_trigger(self, evaluator: Evaluator) -> None:
        """Regenerate masks every ``interval_steps`` optimizer steps, ``total_times`` times."""
        self._current_step = 0
        self._remaining_times = self.total_times

        def after_step() -> None:
            self._current_step += 1
            remaining = self._remaining_times
            if self._current_step == self.interval_steps and (
                remaining == "unlimited" or remaining > 0
            ):
                self.update_masks(self.generate_masks())
                if isinstance(remaining, int):
                    self._remaining_times = remaining - 1
                self._current_step = 0
                self._captured.clear()

        evaluator.patch_optimizer_step(before_step_tasks=[], after_step_tasks=[after_step])

    def _fuse_preprocess(self, evaluator: Evaluator) -> None:
        self._captured.clear()
        if self.data is None:

            def capture(loss: Tensor, batch: Any) -> Tensor:
                self._captured.append(batch)
                return loss

            evaluator.patch_loss(capture)
        self._register_trigger(evaluator)

    def _fuse_postprocess(self, evaluator: Evaluator) -> None:
        pass

    def _single_compress(self, max_steps: int | None, max_epochs: int | None) -> None:
        if max_steps is not None or max_epochs is not None:
            raise ValueError(
                "CUTPruner.compress() takes no max_steps/max_epochs; for pruning during training wrap it: "
                "LinearPruner(pruner, interval_steps, total_times).compress(max_steps, None)"
            )
        if self.data is not None:
            self.update_masks(self.generate_masks())
            return
        self.interval_steps, self.total_times = self.training_steps, 1
        self._fusion_compress(self.training_steps, None)
        if self._remaining_times != 0:
            raise RuntimeError(
                f"the evaluator's training loop stopped before {self.training_steps} optimizer steps "
                "(training_steps), so no masks were made; it must run max_steps steps"
            )

    def compress(  # type: ignore[override]
        self, max_steps: int | None = None, max_epochs: int | None = None
    ) -> tuple[nn.Module, NNIMasks]:
        """Generate the masks; return ``(pruner.bound_model, {module_name: {target_name: mask}})``."""
        return super().compress(max_steps, max_epochs)
