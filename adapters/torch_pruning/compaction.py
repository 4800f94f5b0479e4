"""Masks → a physically smaller model through Torch-Pruning.

Re-exported by :mod:`adapters.torch_pruning`; import from there.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from adapters.torch_pruning.protection import protected_layers
from cut_plugin.checks import FROZEN_ATTRIBUTE_FIX, check_outputs, outputs_of
from cut_plugin.masks import PRUNABLE_TYPES, apply_masks, check_masks
from cut_plugin.record import copy_record, history_of
from cut_plugin.state import scoring_state
from cut_plugin.vocabulary import Inputs, as_example_inputs, index_tensor

__all__ = ["IN_HANDLERS", "OUT_HANDLERS", "align_masks", "prune_by_masks"]

OUT_HANDLERS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)
IN_HANDLERS = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)


def _dependency_graph(model: nn.Module, example: tuple[Any, ...]) -> tp.DependencyGraph:
    # Torch-Pruning traces through autograd: a frozen layer would be invisible to it.
    with scoring_state(model):
        return tp.DependencyGraph().build_dependency(model, example, verbose=False)


def _zero_rows(weight: Tensor, idxs: Sequence[int], transposed: bool) -> Tensor:
    w = weight.transpose(0, 1) if transposed else weight
    return w[list(idxs)].flatten(1).abs().sum(1) == 0


def _removable_channels(group: Any, weights: Mapping[int, Tensor]) -> Tensor | None:
    """Root channels whose rows are zero in every coupled conv/linear producer of the group."""
    removable: Tensor | None = None
    for i, (dep, idxs) in enumerate(group):
        if dep.handler not in OUT_HANDLERS:
            continue
        layer = dep.target.module
        root_idxs = group[i].root_idxs
        if any(r is None for r in root_idxs):
            return None
        zero = _zero_rows(weights[id(layer)], idxs, bool(getattr(layer, "transposed", False)))
        if removable is None:
            removable = torch.ones(len(group[0].idxs), dtype=torch.bool, device=zero.device)
        index = index_tensor(root_idxs, zero)
        removable[index] &= zero
    return removable


def _plan(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    graph: tp.DependencyGraph,
    protected: list[nn.Module],
) -> list[tuple[nn.Module, Any, list[int]]]:
    """(root layer, handler, channel indices) to remove, from the masked weights."""
    names = {id(p): n for n, p in model.named_parameters()}
    weights: dict[int, Tensor] = {}
    for module in model.modules():
        if isinstance(module, PRUNABLE_TYPES):
            param: Tensor = module.weight  # type: ignore[assignment]
            name = names.get(id(param))
            weight = param.detach()
            weights[id(module)] = (
                weight * masks[name] if name is not None and name in masks else weight
            )
    plan = []
    for group in graph.get_all_groups(ignored_layers=protected, root_module_types=PRUNABLE_TYPES):
        removable = _removable_channels(group, weights)
        if removable is None or not removable.any():
            continue
        groups = [
            dep.target.module.groups
            for dep, _ in group
            if dep.handler in IN_HANDLERS
            and 1 < getattr(dep.target.module, "groups", 1) < dep.target.module.in_channels
        ]
        if groups and len(removable) % max(groups) == 0:
            # A grouped conv downstream: remove a channel only together with its
            # counterparts in every group, so the groups stay equal in width.
            removable = removable.view(max(groups), -1).all(0).repeat(max(groups))
            if not removable.any():
                continue
        if removable.all():
            removable[0] = False  # a layer keeps one (zero) channel rather than vanish
        root = group[0].dep
        plan.append((root.target.module, root.handler, removable.nonzero().flatten().tolist()))
    return plan


def align_masks(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    example_inputs: Inputs,
    *,
    task_names: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """Masks extended to what :func:`prune_by_masks` removes.

    Every channel that ``prune_by_masks`` removes also gets its coupled biases and
    BatchNorm scale/shift masked (an unmasked BatchNorm turns a zero channel into
    a nonzero constant), so ``apply_masks(model, align_masks(...))`` computes what
    the compact model computes — for activations with f(0) = 0 (ReLU, GELU, ...;
    after a sigmoid a removed channel would still have added f(0)·W[:, c]).
    """
    checked = check_masks(model, masks)
    work = copy.deepcopy(model)
    graph = _dependency_graph(work, as_example_inputs(example_inputs, work))
    plan = _plan(work, checked, graph, protected_layers(work, example_inputs, task_names))
    names = {id(p): n for n, p in work.named_parameters()}
    aligned = {n: m.expand_as(dict(work.named_parameters())[n]).clone() for n, m in checked.items()}
    for layer, handler, idxs in plan:
        group = graph.get_pruning_group(layer, handler, idxs)
        for dep, local in group:
            if dep.handler not in (*OUT_HANDLERS, tp.prune_batchnorm_out_channels):
                continue
            for attr in ("weight", "bias"):
                param = getattr(dep.target.module, attr, None)
                if not isinstance(param, nn.Parameter) or id(param) not in names:
                    continue
                name = names[id(param)]
                mask = aligned.setdefault(name, torch.ones_like(param, dtype=torch.bool))
                transposed = attr == "weight" and bool(
                    getattr(dep.target.module, "transposed", False)
                )
                (mask.transpose(0, 1) if transposed else mask)[list(local)] = False
    return aligned


def prune_by_masks(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    example_inputs: Inputs,
    *,
    task_names: Sequence[str] | None = None,
    check: bool = True,
) -> nn.Module:
    """Return a physically smaller copy of ``model``: channels masked in every coupled layer removed.

    A root channel of a Torch-Pruning group is removed when its rows are zero, after
    masking, in every coupled conv/linear producer (residual adds and concats
    included); consumers' input columns, biases and BatchNorm go with it. Every
    task's output layer keeps its width. Kept weights stay masked, so the compact
    model computes ``apply_masks(model, align_masks(model, masks, ...))``, which is
    ``apply_masks(model, masks)`` when the masks already cover biases and BatchNorm.

    Args:
        masks: ``{param_name: bool Tensor}`` broadcastable to each parameter (element
            masks, or channel masks like ``(C_out, 1, 1, 1)``).
        example_inputs: a Tensor or tuple for tracing.
        check: run the compact model on ``example_inputs`` against the masked model
            (one forward each) and raise :class:`cut_plugin.checks.TransformCheckError`
            when they differ or it crashes.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    example = as_example_inputs(example_inputs, model)
    aligned = align_masks(model, masks, example, task_names=task_names)
    work = apply_masks(model, aligned)
    reference = outputs_of(work, example, task_names) if check else None
    was_training = work.training
    graph = _dependency_graph(work, example)
    for layer, handler, idxs in _plan(work, {}, graph, protected_layers(work, example, task_names)):
        group = graph.get_pruning_group(layer, handler, idxs)
        if graph.check_pruning_group(group):
            group.prune()
    work.train(was_training)
    if reference is not None:
        check_outputs(
            "prune_by_masks",
            work,
            example,
            reference,
            task_names=task_names,
            promise="the masked model apply_masks(model, align_masks(model, masks, ...))",
            fix=FROZEN_ATTRIBUTE_FIX
            if isinstance(work, torch.fx.GraphModule)
            else "a removed channel may feed an op for which a zero channel is not neutral "
            "(f(0) != 0, e.g. a sigmoid); keep that layer's channels (unmask them), or pass "
            "check=False to accept the difference",
        )
    history = history_of(model) + [tuple(h) for h in graph.pruning_history()]
    return copy_record(model, work, history=history, masks=None)
