"""Building a :class:`MergedNetwork` from the original networks and a grouping (PAM step 5).

For a layer whose output group ``G`` reads the input groups ``R`` (those whose
key contains ``G``'s), the group's weight is block-diagonal in the original
weights: a neuron ``(t, i)`` keeps ``W_t[i, j]`` for every input neuron that
has a member ``(t, j)`` and 0 for the other networks' neurons; biases,
BatchNorm statistics and depthwise kernels are the neuron's own. Nothing is
averaged. Connections from groups ``G`` may not read are cut. MTZ supplies its
zipped groups' weights directly (``overrides``).

Implementation notes: a group none of whose readable groups has a neuron is
left out (it could only output its bias); a task whose output group is left
out raises ``ValueError``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, fx, nn

from cut_plugin.checks import check_shapes
from cut_plugin.vocabulary import index_tensor, model_device_dtype, move_to
from pam_plugin.architecture import (
    Architecture,
    Step,
    check_same_architecture,
    layer_width,
    tensor_attribute,
)
from pam_plugin.grouping import (
    GroupKey,
    Neuron,
    check_task_names,
    exclusive_groups,
    group_name,
    order_groups,
)
from pam_plugin.merged import GroupLayer, MergedNetwork, PlanStep
from pam_plugin.tracing import trace_network

__all__ = ["Prepared", "build_merged", "build_network", "space_of_layers"]

Assignment = Mapping[int, Mapping[GroupKey, Sequence[Neuron]]]
"""``{hidden space index: {group key: neurons}}``; a missing space keeps every neuron exclusive."""
Overrides = Mapping[tuple[str, GroupKey], tuple[Tensor, Tensor | None]]
"""``{(layer node, group key): (weight, bias)}`` used instead of the block-diagonal weights."""


class Prepared:
    """Validated deep copies of the networks (eval mode), their traces and common architecture."""

    def __init__(self, networks: object, inputs: object, *, min_samples: int = 1) -> None:
        if not isinstance(networks, Mapping) or not networks:
            raise TypeError(
                "networks must be a non-empty mapping {task: nn.Module}, got "
                f"{type(networks).__name__}; e.g. {{'digits': net_a, 'letters': net_b}}"
            )
        self.tasks: list[str] = check_task_names(list(networks))
        if not isinstance(inputs, Tensor):
            raise TypeError(
                f"inputs must be one Tensor (B, ...) shared by all networks, got {type(inputs).__name__}"
            )
        if inputs.dim() < 2 or inputs.shape[0] < min_samples:
            raise ValueError(
                f"inputs must be (B, ...) with B >= {min_samples} samples, got shape {tuple(inputs.shape)}"
            )
        self.networks: dict[str, nn.Module] = {}
        for task, network in networks.items():
            if not isinstance(network, nn.Module):
                raise TypeError(
                    f"networks[{task!r}] must be a torch.nn.Module, got {type(network).__name__}"
                )
            self.networks[task] = copy.deepcopy(network).eval()
        self.inputs: Tensor = move_to(inputs, *model_device_dtype(self.networks[self.tasks[0]]))
        traced = {t: trace_network(self.networks[t], self.inputs[:2], name=t) for t in self.tasks}
        self.graphs: dict[str, fx.GraphModule] = {t: traced[t][1] for t in self.tasks}
        self.architecture: Architecture = check_same_architecture(
            [(t, traced[t][0]) for t in self.tasks]
        )
        self.modules: dict[str, dict[str, nn.Module]] = {
            t: dict(self.networks[t].named_modules()) for t in self.tasks
        }
        with torch.no_grad():
            first = {t: self.networks[t](self.inputs[:1].clone()) for t in self.tasks}
        # What every merged network must return (checked by build_network).
        self.output_shapes: dict[str, torch.Size] = {
            t: out.shape for t, out in first.items() if isinstance(out, Tensor)
        }

    def layer(self, step: Step) -> dict[str, nn.Module]:
        """``{task: that network's module}`` for ``step``."""
        return {t: self.modules[t][step.target] for t in self.tasks}


def build_merged(
    networks: Mapping[str, nn.Module],
    example_inputs: Tensor,
    groups: Mapping[str, Mapping[GroupKey, Sequence[Neuron]]] | None = None,
) -> MergedNetwork:
    """Merge ``networks`` with the given groups (default: no merging, every neuron exclusive).

    ``groups``: ``{layer name: {group key: neurons}}``, the layer named by its
    conv/linear module name (the keys of ``group_sizes``; in a ResNet stage,
    which is one channel space, any of its layers); a neuron is a tuple of
    members ``(task, index)``. With no groups the result computes every network
    exactly (side by side, block-diagonal).
    """
    prepared = Prepared(networks, example_inputs)
    by_name = space_of_layers(prepared.architecture)
    assignment: dict[int, Mapping[GroupKey, Sequence[Neuron]]] = {}
    named: dict[int, str] = {}
    for name, layer_groups in (groups or {}).items():
        if name not in by_name:
            raise ValueError(
                f"groups names an unknown layer {name!r}; the merged layers are {list(by_name)}"
            )
        index = by_name[name]
        if index in named:
            raise ValueError(
                f"groups names the layers {named[index]!r} and {name!r}, which write one channel "
                "space (a residual stage); give its groups once"
            )
        named[index] = name
        assignment[index] = _check_groups(
            name, layer_groups, prepared.tasks, prepared.architecture.spaces[index].size
        )
    return build_network(prepared, assignment)


def space_of_layers(architecture: Architecture) -> dict[str, int]:
    """``{conv/linear module name: index of the hidden space it writes}``, in execution order."""
    return {
        architecture.step(node).target: space.index
        for space in architecture.hidden_spaces
        for node in space.producers
    }


def _check_groups(
    layer: str, groups: Mapping[GroupKey, Sequence[Neuron]], tasks: Sequence[str], size: int
) -> dict[GroupKey, list[Neuron]]:
    """Given groups of one layer, or a ``ValueError`` naming the layer and the bad key or neuron."""
    seen: set[tuple[str, int]] = set()
    result: dict[GroupKey, list[Neuron]] = {}
    for key, neurons in groups.items():
        if not isinstance(key, frozenset) or not key or not key <= set(tasks):
            raise ValueError(
                f"groups[{layer!r}] has the key {key!r}; keys are non-empty frozensets of {list(tasks)}"
            )
        for neuron in neurons:
            member = neuron[0] if len(neuron) == 1 else None
            if (
                member is None
                or member[0] not in tasks
                or not 0 <= member[1] < size
                or member in seen
            ):
                raise ValueError(
                    f"groups[{layer!r}] has the neuron {neuron!r}; a neuron is ((task, index),) with "
                    f"index in [0, {size}), each at most once"
                )
            seen.add(member)
        result[key] = list(neurons)
    return result


def space_groups(
    prepared: Prepared, assignment: Assignment
) -> dict[int, dict[GroupKey, list[Neuron]]]:
    """Every space's groups as :func:`build_network` builds them from ``assignment``.

    The input is one group of everyone; task outputs are exclusive; a hidden space
    ``assignment`` does not name is exclusive; empty groups are dropped.
    """
    arch, tasks = prepared.architecture, prepared.tasks
    everyone = frozenset(tasks)
    groups_of: dict[int, dict[GroupKey, list[Neuron]]] = {}
    for space in arch.spaces:
        if space.role == "input":
            groups_of[space.index] = {
                everyone: [tuple((t, c) for t in tasks) for c in range(space.size)]
            }
        elif space.role == "output":
            producer = prepared.layer(arch.step(space.producers[0]))
            groups_of[space.index] = exclusive_groups(
                {t: layer_width(m) for t, m in producer.items()}, tasks
            )
        elif space.index not in assignment:
            groups_of[space.index] = exclusive_groups(space.size, tasks)
        else:
            groups_of[space.index] = {
                k: list(v) for k, v in assignment[space.index].items() if len(v)
            }
    return groups_of


def build_network(
    prepared: Prepared, assignment: Assignment, overrides: Overrides | None = None
) -> MergedNetwork:
    """The merged network of ``prepared``'s networks under ``assignment`` (see module docstring)."""
    arch, tasks = prepared.architecture, prepared.tasks
    everyone = frozenset(tasks)
    groups_of = space_groups(prepared, assignment)
    names = {key: group_name(key, tasks) for groups in groups_of.values() for key in groups}
    present: dict[str, list[GroupKey]] = {arch.input_node: [everyone]}
    blocks: dict[str, dict[str, nn.Module]] = {}
    plan: list[PlanStep] = []
    for step in arch.steps:
        source = present[step.inputs[0]]
        if step.kind == "layer":
            inputs = groups_of[arch.space_of(step.inputs[0]).index]
            factor = arch.factor(step.inputs[0])
            modules: dict[str, nn.Module] = {}
            built: list[GroupKey] = []
            for key, rows in groups_of[step.space].items():
                readable = [h for h in source if h >= key]
                if not readable:
                    continue
                parts = {names[h]: inputs[h] for h in readable}
                override = (overrides or {}).get((step.node, key))
                modules[names[key]] = _group_layer(
                    prepared.layer(step), rows, parts, factor, override
                )
                built.append(key)
            present[step.node] = order_groups(built, tasks)
            blocks[step.node] = modules
            plan.append(PlanStep(step.node, "layer", step.inputs))
        elif step.kind == "module":
            of_space = groups_of[step.space]
            originals = {} if step.replacement is not None else prepared.layer(step)
            blocks[step.node] = {
                names[k]: _channel_module(
                    originals, of_space[k], arch.factor(step.inputs[0]), step.replacement
                )
                for k in source
            }
            present[step.node] = source
            plan.append(PlanStep(step.node, "module", step.inputs))
        elif step.kind == "function":
            present[step.node] = source
            plan.append(PlanStep(step.node, "function", step.inputs, function=step.function,
                                 args=step.args, kwargs=step.kwargs))  # fmt: skip
        else:
            present[step.node] = order_groups(set(source) | set(present[step.inputs[1]]), tasks)
            plan.append(PlanStep(step.node, "add", step.inputs))
    outputs = {t: names[frozenset({t})] for t in tasks}
    missing = [t for t in tasks if frozenset({t}) not in present[arch.output_node]]
    if missing:
        raise ValueError(
            f"task(s) {missing} keep no neuron in the layer before the output: the merged network "
            "cannot compute them; lower alpha_conv/alpha_fc (fewer irrelevant neurons)"
        )
    network = MergedNetwork(
        tasks=tasks,
        plan=plan,
        blocks=blocks,
        group_tasks={name: key for key, name in names.items()},
        input_node=arch.input_node,
        output_node=arch.output_node,
        outputs=outputs,
        output_layers=arch.output_space.producers,
        layer_names={s.node: s.target for s in arch.steps if s.kind == "layer"},
        module_names={s.node: s.target for s in arch.steps if s.kind == "module" and s.target},
    )
    if set(prepared.output_shapes) == set(tasks):
        check_shapes(
            "merge", network, (prepared.inputs[:1],), prepared.output_shapes,
            fix="the merged network must compute each network's output; please report the networks",
        )  # fmt: skip
    return network


def _new_layer(reference: nn.Module, in_width: int, out_width: int, bias: bool) -> nn.Module:
    weight = tensor_attribute(reference, "weight")
    options: dict[str, Any] = {"bias": bias, "device": weight.device, "dtype": weight.dtype}
    if isinstance(reference, nn.Linear):
        return nn.Linear(in_width, out_width, **options)
    if isinstance(reference, nn.Conv1d | nn.Conv2d):
        kind = nn.Conv2d if isinstance(reference, nn.Conv2d) else nn.Conv1d
        return kind(
            in_width, out_width, reference.kernel_size, stride=reference.stride,  # type: ignore[arg-type]
            padding=reference.padding, dilation=reference.dilation,  # type: ignore[arg-type]
            padding_mode=reference.padding_mode, **options,
        )  # fmt: skip
    raise TypeError(f"not a mergeable layer: {type(reference).__name__}")


def block_diagonal(
    originals: Mapping[str, nn.Module],
    rows: Sequence[Neuron],
    columns: Sequence[Neuron],
    factor: int,
) -> tuple[Tensor, Tensor | None]:
    """Weight ``(len(rows), len(columns)·factor, *kernel)`` and bias ``(len(rows),)`` of one group.

    ``rows`` are single-member neurons; a row ``(t, i)`` takes ``W_t[i, j]``
    from each column neuron with a member ``(t, j)``, zero elsewhere.
    """
    reference = next(iter(originals.values()))
    ref_weight = tensor_attribute(reference, "weight")
    kernel = tuple(ref_weight.shape[2:])
    channels = ref_weight.shape[1] // factor
    weight = ref_weight.new_zeros(len(rows), len(columns), factor, *kernel)
    bias = None if reference.bias is None else ref_weight.new_zeros(len(rows))
    column_members = [dict(neuron) for neuron in columns]
    for task, layer in originals.items():
        row_pos = [p for p, neuron in enumerate(rows) if neuron[0][0] == task]
        row_src = [rows[p][0][1] for p in row_pos]
        if any(len(rows[p]) != 1 for p in row_pos):
            raise ValueError("a neuron with several members needs its weights given (overrides)")
        col_pos = [q for q, members in enumerate(column_members) if task in members]
        col_src = [column_members[q][task] for q in col_pos]
        if not row_pos:
            continue
        original = tensor_attribute(layer, "weight")
        source = original.reshape(original.shape[0], channels, factor, *kernel)
        if col_pos:
            rows_at, cols_at = index_tensor(row_pos, weight), index_tensor(col_pos, weight)
            rows_of, cols_of = index_tensor(row_src, source), index_tensor(col_src, source)
            weight[rows_at[:, None], cols_at[None, :]] = source[rows_of[:, None], cols_of[None, :]]
        if bias is not None:
            bias[row_pos] = tensor_attribute(layer, "bias")[row_src]
    return weight.reshape(len(rows), len(columns) * factor, *kernel), bias


def _group_layer(
    originals: Mapping[str, nn.Module],
    rows: Sequence[Neuron],
    parts: Mapping[str, Sequence[Neuron]],
    factor: int,
    override: tuple[Tensor, Tensor | None] | None,
) -> GroupLayer:
    """The :class:`GroupLayer` of ``rows`` reading ``parts`` (``{input group: its neurons}``, in order)."""
    columns = [n for neurons in parts.values() for n in neurons]
    weight, bias = (
        override if override is not None else block_diagonal(originals, rows, columns, factor)
    )
    reference = next(iter(originals.values()))
    modules: dict[str, nn.Module] = {}
    start = 0
    for index, (group, neurons) in enumerate(parts.items()):
        stop = start + len(neurons) * factor
        part_bias = bias if index == 0 else None
        module = _new_layer(reference, stop - start, weight.shape[0], part_bias is not None)
        with torch.no_grad():
            tensor_attribute(module, "weight").copy_(weight[:, start:stop])
            if part_bias is not None:
                tensor_attribute(module, "bias").copy_(part_bias)
        modules[group] = module
        start = stop
    return GroupLayer(modules)


def _channel_module(
    originals: Mapping[str, nn.Module],
    neurons: Sequence[Neuron],
    factor: int,
    replacement: nn.Module | None,
) -> nn.Module:
    """A per-group copy of a per-channel module (BatchNorm, depthwise conv) or a parameterless one."""
    if replacement is not None:
        return copy.deepcopy(replacement)
    reference = next(iter(originals.values()))
    module = copy.deepcopy(reference)
    tensors = [
        name
        for name, t in [
            *reference.named_parameters(recurse=False),
            *reference.named_buffers(recurse=False),
        ]
        if t.dim() > 0
    ]
    if not tensors:
        return module
    size = len(neurons)
    with torch.no_grad():
        for name in tensors:
            template: Tensor = getattr(reference, name)
            rest = tuple(template.shape[1:])
            gathered = template.new_empty(size, factor, *rest)
            for task, layer in originals.items():
                positions = [p for p, neuron in enumerate(neurons) if neuron[0][0] == task]
                if positions:
                    source = getattr(layer, name).reshape(-1, factor, *rest)
                    gathered[positions] = source[[neurons[p][0][1] for p in positions]]
            value = gathered.reshape(size * factor, *rest)
            if name in module._parameters:
                module._parameters[name] = nn.Parameter(value, requires_grad=template.requires_grad)
            else:
                module._buffers[name] = value
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.num_features = size * factor
    elif isinstance(module, nn.Conv1d | nn.Conv2d):
        module.in_channels = module.out_channels = module.groups = size
    return module
