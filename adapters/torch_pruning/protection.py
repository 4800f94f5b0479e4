"""Layers pruning must not touch, and Torch-Pruning options re-pointed at a pruned copy.

Re-exported by :mod:`adapters.torch_pruning`; import from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from cut_plugin.masks import PRUNABLE_TYPES
from cut_plugin.state import scoring_state
from cut_plugin.vocabulary import Inputs, as_example_inputs, run_model

__all__ = [
    "SaturatingCounts",
    "output_layers",
    "protected_layers",
    "saturating_kwargs",
    "to_copy_kwargs",
]


MODULE_KEYED = ("ignored_layers", "pruning_ratio_dict", "unwrapped_parameters", "in_channel_groups",
                "out_channel_groups", "num_heads", "customized_pruners")  # fmt: skip


def to_copy_kwargs(
    original: nn.Module, copy: nn.Module, tp_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Torch-Pruning options that name modules/parameters of ``original``, re-pointed at ``copy``.

    The pruners here prune a copy (``select_tasks``); a module of a dropped task
    is left out. Keys other than modules/parameters (e.g. layer types) are kept.
    """
    modules = {id(m): n for n, m in original.named_modules()}
    params = {id(p): n for n, p in original.named_parameters()}
    copy_modules = dict(copy.named_modules())
    copy_params = dict(copy.named_parameters())

    def one(item: Any) -> Any:
        if isinstance(item, nn.Parameter) and id(item) in params:
            return copy_params.get(params[id(item)])
        if isinstance(item, nn.Module) and id(item) in modules:
            return copy_modules.get(modules[id(item)])
        if isinstance(item, tuple) and item and all(isinstance(x, nn.Module) for x in item):
            mapped = tuple(m for m in map(one, item) if m is not None)
            return mapped or None
        return item

    result = dict(tp_kwargs)
    for key in MODULE_KEYED:
        value = result.get(key)
        if isinstance(value, dict):
            result[key] = {k2: v for k, v in value.items() if (k2 := one(k)) is not None}
        elif isinstance(value, list | tuple):
            items = []
            for entry in value:
                if isinstance(entry, tuple) and entry and isinstance(entry[0], nn.Parameter):
                    mapped = one(entry[0])
                    if mapped is not None:
                        items.append((mapped, *entry[1:]))
                elif (mapped := one(entry)) is not None:
                    items.append(mapped)
            result[key] = items
    return result


def _output_layer_lists(
    model: nn.Module, example_inputs: Inputs, task_names: Sequence[str] | None = None
) -> dict[str, list[nn.Module]]:
    """For each task, the conv/linear layers nearest its output in the autograd graph."""
    produced: dict[int, nn.Module] = {}

    def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor) and output.grad_fn is not None:
            produced[id(output.grad_fn)] = module

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, PRUNABLE_TYPES)
    ]
    try:
        with scoring_state(model), torch.enable_grad():
            outputs = run_model(model, as_example_inputs(example_inputs), task_names)
            result: dict[str, list[nn.Module]] = {}
            for task, output in outputs.items():
                found: list[nn.Module] = []
                stack = [output.grad_fn] if output.grad_fn is not None else []
                seen = {id(node) for node in stack}
                while stack:
                    node = stack.pop()
                    if id(node) in produced:
                        if produced[id(node)] not in found:
                            found.append(produced[id(node)])
                        continue
                    for parent, _ in node.next_functions:
                        if parent is not None and id(parent) not in seen:
                            seen.add(id(parent))
                            stack.append(parent)
                result[task] = found
            return result
    finally:
        for handle in handles:
            handle.remove()


def output_layers(
    model: nn.Module, example_inputs: Inputs, *, task_names: Sequence[str] | None = None
) -> dict[str, nn.Module]:
    """``{task: the conv/linear layer that produces its output}``.

    Found by a walk of the autograd graph from each output back to the nearest
    conv/linear layer (through upsampling, pooling, reshapes...). Pruning these
    layers' output channels would change the task's output width, so the
    pruners here always protect them. A task whose output is the sum of several
    layers maps to the first one found; a task with none is absent.
    """
    lists = _output_layer_lists(model, example_inputs, task_names)
    return {task: layers[0] for task, layers in lists.items() if layers}


def protected_layers(
    model: nn.Module, example_inputs: Inputs, task_names: Sequence[str] | None = None
) -> list[nn.Module]:
    """Layers pruning must not touch (for ``ignored_layers``).

    Every task's output layer; a grouped (depthwise) conv reading the model's input
    (Torch-Pruning couples its output channels to its input channels, and the
    model's input width is fixed); a conv/linear layer called more than once per
    forward (tied weights: Torch-Pruning cannot prune a layer reused with different
    couplings consistently).
    """
    layers: list[nn.Module] = []
    for found in _output_layer_lists(model, example_inputs, task_names).values():
        layers.extend(m for m in found if all(m is not k for k in layers))
    extra = _structural_layers(model, example_inputs, task_names)
    return layers + [m for m in extra if all(m is not k for k in layers)]


def _structural_layers(
    model: nn.Module, example_inputs: Inputs, task_names: Sequence[str] | None
) -> list[nn.Module]:
    calls: dict[int, int] = {}
    reads_input: list[nn.Module] = []

    def hook(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        calls[id(module)] = calls.get(id(module), 0) + 1
        # In scoring_state every parameter requires grad, so only a model input (or a
        # constant) arrives here without an autograd history.
        grouped = getattr(module, "groups", 1) > 1
        if grouped and inputs and isinstance(inputs[0], Tensor) and inputs[0].grad_fn is None:
            reads_input.append(module)

    layers = [m for m in model.modules() if isinstance(m, PRUNABLE_TYPES)]
    handles = [m.register_forward_pre_hook(hook) for m in layers]
    try:
        with scoring_state(model), torch.enable_grad():
            run_model(model, as_example_inputs(example_inputs), task_names)
    finally:
        for handle in handles:
            handle.remove()
    owners: dict[int, list[nn.Module]] = {}
    for m in layers:
        owners.setdefault(id(m.weight), []).append(m)
    tied = [m for group in owners.values() if len(group) > 1 for m in group]
    reused = [m for m in layers if calls.get(id(m), 0) > 1] + tied
    return reads_input + [m for m in reused if all(m is not k for k in reads_input)]


class SaturatingCounts:
    """A Torch-Pruning pruner mix-in: a layer keeps at least ``round_to`` channels.

    Torch-Pruning keeps ``int(C * (1 - r))`` channels and refuses a group that would
    keep none, leaving it whole: an 8-channel layer kept 8 at r = 0.9, so the achieved
    size grew with the ratio. Saturating instead keeps sizes monotone in the ratio.
    Used by ``CUTPruner`` and ``baseline_prune`` alike, so both count the same way.
    """

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        n_pruned = super()._round_to(n_pruned, current_channels, round_to)  # type: ignore[misc]
        return min(n_pruned, max(current_channels - round_to, 0))


def saturating_kwargs(tp_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``tp_kwargs`` with ``round_to=1`` unless given: Torch-Pruning then routes every count
    through ``_round_to`` (:class:`SaturatingCounts`)."""
    result = dict(tp_kwargs)
    if result.get("round_to") is None:
        result["round_to"] = 1
    return result
