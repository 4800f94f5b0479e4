"""Masks → a physically smaller model through Torch-Pruning, and portable save/load.

Re-exported by :mod:`adapters.torch_pruning`; import from there.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from cut_plugin import select_tasks
from cut_plugin.batching import Inputs, model_device_dtype, run_model
from cut_plugin.masks import PRUNABLE_TYPES, apply_masks, check_masks
from cut_plugin.state import scoring_state

__all__ = [
    "align_masks",
    "as_example_inputs",
    "load_pruned",
    "output_layers",
    "prune_by_masks",
    "pruning_history",
    "save_pruned",
]

HISTORY = "_cut_pam_history"
TASKS = "_cut_pam_tasks"
TASK_NAMES = "_cut_pam_task_names"
FORMAT = "cut-pam/pruned-v1"

OUT_HANDLERS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)
IN_HANDLERS = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)


def as_example_inputs(example_inputs: Any, model: nn.Module | None = None) -> tuple[Any, ...]:
    """Example inputs as the tuple Torch-Pruning expects (a bare tensor is wrapped).

    With ``model``, floating tensors are cast to the model's device and dtype (new
    tensors; the caller's are unchanged), as ``run_model`` does for batches.
    """
    if isinstance(example_inputs, Tensor):
        example = (example_inputs,)
    elif isinstance(example_inputs, tuple | list):
        example = tuple(example_inputs)
    else:
        raise TypeError(
            f"example_inputs must be a Tensor or a tuple of Tensors, got {type(example_inputs).__name__}"
        )
    if model is None:
        return example
    device, dtype = model_device_dtype(model)
    return tuple(
        x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
        if isinstance(x, Tensor)
        else x
        for x in example
    )


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
            removable = torch.ones(len(group[0].idxs), dtype=torch.bool)
        index = torch.tensor(list(root_idxs), dtype=torch.long)
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
    graph = tp.DependencyGraph().build_dependency(
        work, as_example_inputs(example_inputs, work), verbose=False
    )
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


def pruning_history(model: nn.Module) -> list[tuple[str, bool, list[int]]]:
    """The Torch-Pruning history a compact model of this package carries (empty if none)."""
    return list(getattr(model, HISTORY, []))


def prune_by_masks(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    example_inputs: Inputs,
    *,
    task_names: Sequence[str] | None = None,
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
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    example = as_example_inputs(example_inputs, model)
    aligned = align_masks(model, masks, example, task_names=task_names)
    work = apply_masks(model, aligned)
    was_training = work.training
    graph = tp.DependencyGraph().build_dependency(work, example, verbose=False)
    for layer, handler, idxs in _plan(work, {}, graph, protected_layers(work, example, task_names)):
        group = graph.get_pruning_group(layer, handler, idxs)
        if graph.check_pruning_group(group):
            group.prune()
    work.train(was_training)
    setattr(work, HISTORY, pruning_history(model) + [tuple(h) for h in graph.pruning_history()])
    if hasattr(model, TASKS):
        setattr(work, TASKS, getattr(model, TASKS))
    return work


def save_pruned(
    model: nn.Module, path: str | os.PathLike[str], *, history: Sequence[Any] | None = None
) -> None:
    """Save a compact model portably: its pruning history and state dict.

    Reload with :func:`load_pruned` (``torch.load(weights_only=True)``, no pickled
    code). ``history`` defaults to what ``cut_prune``/``CUTPruner``/
    ``prune_by_masks`` recorded on the model; pass ``pruner.pruning_history()``
    for models pruned by other Torch-Pruning pruners.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    entries = pruning_history(model) if history is None else list(history)
    if history is None and not hasattr(model, HISTORY):
        raise ValueError(
            "the model carries no pruning history (it was not made by cut_prune, CUTPruner or "
            "prune_by_masks); pass history=pruner.pruning_history()"
        )
    tasks = getattr(model, TASKS, None)
    state = {
        "format": FORMAT,
        "history": [[str(n), bool(out), [int(i) for i in idxs]] for n, out, idxs in entries],
        "tasks": list(tasks) if tasks is not None else None,
        "task_names": getattr(model, TASK_NAMES, None),
        "state_dict": model.state_dict(),
    }
    torch.save(state, path)


def load_pruned(
    path: str | os.PathLike[str], model_factory: Callable[[], nn.Module], example_inputs: Inputs
) -> nn.Module:
    """Rebuild a compact model saved by :func:`save_pruned`.

    ``model_factory()`` must build the original (unpruned, all tasks) architecture;
    the saved task selection and pruning history are replayed on it, then the
    state dict is loaded. Loads with ``weights_only=True``.
    """
    if not callable(model_factory):
        raise TypeError(
            "model_factory must be a callable that builds the original model, e.g. lambda: Net()"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"{os.fspath(path)!r} is not a file written by save_pruned (format {FORMAT!r})"
        )
    model = model_factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_factory() must return an nn.Module, got {type(model).__name__}")
    was_training = model.training
    history = [(n, out, idxs) for n, out, idxs in state["history"]]
    # Replay on the full model first (earlier prunings may have touched heads a
    # later task selection dropped), then select the tasks.
    graph = tp.DependencyGraph().build_dependency(
        model, as_example_inputs(example_inputs, model), verbose=False
    )
    try:
        graph.load_pruning_history(history)
    except AttributeError as error:
        raise ValueError(
            f"the saved pruning history does not fit the model model_factory() builds ({error}); "
            "pass the factory of the original architecture"
        ) from None
    if state["tasks"] is not None:
        model = select_tasks(model, state["tasks"], task_names=state.get("task_names"))
        setattr(model, TASKS, list(state["tasks"]))
        setattr(model, TASK_NAMES, state.get("task_names"))
    model.load_state_dict(state["state_dict"])
    model.train(was_training)
    setattr(model, HISTORY, history)
    return model
