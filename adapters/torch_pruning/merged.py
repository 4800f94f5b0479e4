"""Pruning a PAM/MTZ merged network with Torch-Pruning (PAM step 6, without the retraining).

The paper prunes the merged network with an existing pruner while retraining
it; its code prunes only the shared group for VGG/LeNet and every group for
ResNet. :func:`prune_merged` does the pruning part with any Torch-Pruning
importance::

    import torch_pruning as tp
    from adapters.torch_pruning import prune_merged
    pruned = prune_merged(merged, (x,), importance=tp.importance.GroupMagnitudeImportance(),
                          pruning_ratio=0.5, pruned_groups="shared")

Task output layers are never pruned (their widths are the tasks' outputs).
Torch-Pruning keeps at least one channel per layer and group; with
``accept=`` :func:`prune_merged` then deletes whole groups (a layer's group,
an exclusive chain) while ``accept(network)`` holds
(:func:`pam_plugin.delete_groups`).
The result is still a :class:`pam_plugin.MergedNetwork`: ``for_tasks`` reads
its structure from the pruned modules.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ParamSpec, TypeVar

import torch
import torch_pruning as tp
from torch import Tensor, nn

from cut_plugin.vocabulary import Loss, as_example_inputs, model_device_dtype, move_to, run_model
from pam_plugin import GATE_GROUPS, MergedNetwork, delete_groups, pruned_groups_of
from pam_plugin.gates import GateGroups

__all__ = ["PRUNED_GROUPS", "prune_merged"]

PrunedGroups = GateGroups
PRUNED_GROUPS: tuple[PrunedGroups, ...] = GATE_GROUPS
"""The ``pruned_groups`` values (:func:`pam_plugin.pruned_groups_of`'s vocabulary)."""

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _renamed_keyword(old: str, new: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Accept the keyword ``old`` as ``new`` with a ``DeprecationWarning``; both at once is an error."""

    def decorate(function: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(function)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(
                        f"{function.__name__}() got both {new}= and its deprecated old name "
                        f"{old}=; pass only {new}={kwargs[old]!r}"
                    )
                warnings.warn(
                    f"{function.__name__}({old}=...) is deprecated; use {new}=...",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper

    return decorate


@_renamed_keyword("groups", "pruned_groups")
def prune_merged(
    merged: MergedNetwork,
    example_inputs: Any,
    *,
    importance: tp.importance.Importance,
    pruning_ratio: float,
    pruned_groups: PrunedGroups = "shared",
    iterative_steps: int = 1,
    data: Iterable[tuple[Any, Mapping[str, Tensor]]] | None = None,
    losses: Mapping[str, Loss] | None = None,
    accept: Callable[[MergedNetwork], bool] | None = None,
    **tp_kwargs: Any,
) -> MergedNetwork:
    """Return a pruned copy of ``merged`` (the argument is left untouched).

    Args:
        merged: a merged network from ``PAMMerger``/``MTZMerger``.
        example_inputs: ``x`` or ``(x,)``, an input batch ``(B, ...)``.
        importance: any Torch-Pruning importance, e.g.
            ``tp.importance.GroupMagnitudeImportance()`` or ``GroupTaylorImportance()``.
        pruning_ratio: fraction of the pruned groups' channels removed.
        pruned_groups: ``"shared"`` prunes only the groups serving several tasks
            (the paper's code for VGG/LeNet); ``"all"`` every hidden group. Its old
            name ``groups=`` still works, with a ``DeprecationWarning``.
        iterative_steps: Torch-Pruning steps reaching ``pruning_ratio``.
        data, losses: ``(inputs, {task: target})`` batches and ``{task: loss}``;
            when given, the gradients of the summed task losses over ``data``
            are computed before every step (gradient importances such as
            Taylor need them). Without them a Taylor importance uses the
            ``.grad`` already on ``merged``'s parameters (run backward first).
        accept: ``accept(network) -> bool``; when given, after the channel
            pruning whole groups are deleted (largest MAC saving first) while it
            holds, e.g. every task's validation accuracy within a tolerance.
            Every group may be deleted, whatever ``pruned_groups`` says (a
            channel pruner cannot remove a group's last channel).
        tp_kwargs: passed to ``tp.pruner.BasePruner`` (``global_pruning``,
            ``round_to``, ``max_pruning_ratio``, ...).
    """
    if not isinstance(merged, MergedNetwork):
        raise TypeError(f"merged must be a pam_plugin.MergedNetwork, got {type(merged).__name__}")
    if not isinstance(importance, tp.importance.Importance):
        raise TypeError(
            f"importance must be a Torch-Pruning Importance object, got {importance!r}; "
            "e.g. tp.importance.GroupMagnitudeImportance()"
        )
    if (
        isinstance(pruning_ratio, bool)
        or not isinstance(pruning_ratio, int | float)
        or not 0 <= pruning_ratio < 1
    ):
        raise ValueError(
            f"pruning_ratio must be a float in [0, 1) (the fraction removed), got {pruning_ratio!r}"
        )
    if pruned_groups not in PRUNED_GROUPS:
        raise ValueError(
            f"pruned_groups must be one of {list(PRUNED_GROUPS)}, got {pruned_groups!r}"
        )
    if (
        isinstance(iterative_steps, bool)
        or not isinstance(iterative_steps, int)
        or iterative_steps < 1
    ):
        raise ValueError(f"iterative_steps must be an int >= 1, got {iterative_steps!r}")
    if (data is None) != (losses is None):
        raise ValueError("give data and losses together (the gradients need both), or neither")
    if accept is not None and not callable(accept):
        raise TypeError(
            f"accept must be a callable (MergedNetwork) -> bool or None, got {accept!r}"
        )
    if "ignored_layers" in tp_kwargs:
        raise TypeError(
            "ignored_layers is chosen by pruned_groups=...; prune_merged does not take it"
        )
    inputs = as_example_inputs(example_inputs, merged)  # on the network's device and dtype
    model = copy.deepcopy(merged)
    was_training = model.training
    if (
        data is None
        and isinstance(importance, tp.importance.GroupTaylorImportance)
        and any(p.grad is None for p in model.parameters() if p.requires_grad)
    ):
        raise ValueError(
            "Taylor importance needs gradients: pass data=[(inputs, {task: target}), ...] and "
            "losses={task: loss_fn}, or run backward on the merged network first"
        )
    pruner = tp.pruner.BasePruner(
        model,
        inputs,
        importance=importance,
        pruning_ratio=float(pruning_ratio),
        iterative_steps=iterative_steps,
        ignored_layers=_ignored_layers(model, pruned_groups),
        **tp_kwargs,
    )
    for _ in range(iterative_steps):
        if data is not None and losses is not None:
            _accumulate_gradients(model, data, losses)
        pruner.step()
    if data is not None:
        model.zero_grad(set_to_none=True)
    model.train(was_training)
    if accept is not None:
        model, _ = delete_groups(model, inputs, accept=accept)
    return model


def _ignored_layers(model: MergedNetwork, pruned_groups: PrunedGroups) -> list[nn.Module]:
    """Output layers always; with ``shared``, also every layer of a task-exclusive group."""
    ignored = [m for modules in model.output_layers().values() for m in modules]
    if pruned_groups == "all":
        return ignored
    pruned = pruned_groups_of(model, pruned_groups)
    for layer_name, groups_of_layer in model.layer_groups().items():
        for name, layer in groups_of_layer.items():
            if (
                name not in pruned.get(layer_name, ())
                and layer_name not in model.output_layer_names
            ):
                ignored.append(layer)
    return ignored


def _accumulate_gradients(
    model: MergedNetwork,
    data: Iterable[tuple[Any, Mapping[str, Tensor]]],
    losses: Mapping[str, Loss],
) -> None:
    """``.grad`` = gradient of the summed task losses over every batch of ``data``."""
    missing = [t for t in model.tasks if t not in losses]
    if missing:
        raise ValueError(
            f"losses has no entry for task(s) {missing}; the merged network computes {list(model.tasks)}"
        )
    model.zero_grad(set_to_none=True)
    was_training = model.training
    model.eval()
    count = 0
    device, dtype = model_device_dtype(model)
    with torch.enable_grad():
        for inputs, targets in data:
            outputs = run_model(model, inputs)
            loss = sum(
                losses[t](outputs[t], move_to(targets[t], device, dtype)) for t in model.tasks
            )
            loss.backward()  # type: ignore[union-attr]
            count += 1
    model.train(was_training)
    if count == 0:
        raise ValueError(
            "data yielded no batch; pass a list or DataLoader of (inputs, {task: target})"
        )
