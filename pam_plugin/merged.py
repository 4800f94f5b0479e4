"""The merged multitask network: one module per group per layer, task subsets that really run less.

A :class:`MergedNetwork` replays the traced architecture of the original
networks (``pam_plugin.architecture``) with every hidden layer split into
groups (``pam_plugin.grouping``). A group keyed ``K`` (the tasks it serves)
reads the previous layer's groups whose key contains ``K``: its
:class:`GroupLayer` holds one conv/linear part per group read and sums them
(the same as one layer on their concatenation; Torch-Pruning 1.6 mis-maps a
concatenation of flattened maps, a sum it handles). BatchNorm, activations,
pooling and residual additions run group by group; task ``t``'s output is the
output layer's group ``{t}``.

The forward is a loop over a fixed plan and over the groups present in the
module dicts: no data-dependent control flow, so torch.fx and Torch-Pruning
trace it; a group with no neuron has no module. Everything structural (which
groups run, their widths) is read from the current modules, so a pruned
network stays correct and :meth:`MergedNetwork.for_tasks` works after pruning.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from pam_plugin.architecture import StepKind, layer_width
from pam_plugin.grouping import SHARED

__all__ = ["GroupLayer", "MergedNetwork", "PlanStep"]


@dataclass(frozen=True)
class PlanStep:
    """One step of a merged network's forward.

    ``function``/``args``/``kwargs``: a functional op applied to each group.
    """

    node: str
    kind: StepKind
    inputs: tuple[str, ...]
    function: Callable[..., Tensor] | None = None
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()


class GroupLayer(nn.Module):
    """One group of a merged conv/linear layer: ``Σ_h parts[h](x_h)`` over the groups ``h`` it reads.

    ``parts``: ``{input group: Conv/Linear}``, all of one output width; only
    the first has a bias.
    """

    def __init__(self, parts: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(dict(parts))

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """``inputs``: ``{group: (B, C_h, ...)}`` → ``(B, width, ...)``."""
        result: Tensor | None = None
        for group, part in self.parts.items():
            if group in inputs:
                value = part(inputs[group])
                result = value if result is None else result + value
        if result is None:
            raise RuntimeError(f"none of the groups {list(self.parts)} this layer reads is present")
        return result

    def drop_parts(self, groups: set[str]) -> int:
        """Delete the parts reading ``groups`` (the bias moves to a kept part); parts left."""
        bias: Tensor | None = None
        for group in [g for g in self.parts if g in groups]:
            removed = getattr(self.parts[group], "bias", None)
            if isinstance(removed, Tensor):
                bias = removed
            del self.parts[group]
        if bias is not None and len(self.parts):
            first = next(iter(self.parts.values()))
            kept = getattr(first, "bias", None)
            if isinstance(kept, Tensor):
                with torch.no_grad():
                    kept.add_(bias)
            else:
                first.register_parameter("bias", nn.Parameter(bias.detach().clone()))
        return len(self.parts)

    @property
    def width(self) -> int:
        """Neurons of the group (output channels or features)."""
        return layer_width(next(iter(self.parts.values())))


class MergedNetwork(nn.Module):
    """N single-task networks merged into one multitask network; ``forward(x) -> {task: output}``.

    Built by :class:`pam_plugin.PAMMerger`, :class:`pam_plugin.MTZMerger` or
    :func:`pam_plugin.build_merged`. A layer is named by the original
    networks' module name (e.g. ``features.0``) everywhere: :meth:`groups`,
    :meth:`layer_groups`, :meth:`group_sizes`. A group is ``shared``, a task
    name, or tasks joined by ``&``. The modules live in
    ``blocks[node][group]`` with ``node`` the traced node (e.g. ``features_0``:
    a ``ModuleDict`` key cannot hold a dot), which is what state-dict keys and
    NNI ``op_names`` show.

    Args:
        tasks: the tasks the network computes, in output order.
        plan: the forward's steps in execution order.
        blocks: ``{node: {group: module}}`` for layer and module steps.
        group_tasks: ``{group: tasks it serves}`` for every group name used.
        input_node, output_node: the plan's input and output nodes.
        outputs: ``{task: output-layer group}``.
        output_layers: the layer nodes writing the output (their modules are never pruned).
        layer_names: ``{layer node: original module name}`` of the conv/linear layers.
        module_names: ``{module node: original module name}`` of the per-channel
            modules (BatchNorm, depthwise conv, activations, ...), where they have one.
    """

    def __init__(
        self,
        *,
        tasks: Iterable[str],
        plan: Iterable[PlanStep],
        blocks: Mapping[str, Mapping[str, nn.Module]],
        group_tasks: Mapping[str, Iterable[str]],
        input_node: str,
        output_node: str,
        outputs: Mapping[str, str],
        output_layers: Iterable[str],
        layer_names: Mapping[str, str],
        module_names: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.tasks: tuple[str, ...] = tuple(tasks)
        self.plan: tuple[PlanStep, ...] = tuple(plan)
        self.blocks = nn.ModuleDict(
            {node: nn.ModuleDict(dict(groups)) for node, groups in blocks.items()}
        )
        self.group_tasks: dict[str, frozenset[str]] = {
            g: frozenset(t) for g, t in group_tasks.items()
        }
        self.input_node = input_node
        self.output_node = output_node
        self.outputs: dict[str, str] = dict(outputs)
        self.output_layer_nodes: tuple[str, ...] = tuple(output_layers)
        self.layer_names: dict[str, str] = dict(layer_names)
        self.module_names: dict[str, str] = dict(module_names or {})
        self._drop_unused_groups()

    def groups(self, name: str) -> nn.ModuleDict:
        """``{group: module}`` of a layer or per-channel module named by its module name.

        ``name``: the original networks' module name (``features.0``, listed by
        ``layer_names``/``module_names``). The traced node name (``features_0``)
        still works with a ``DeprecationWarning`` where the step has a module
        name, silently for functional steps (pooling by function), which have none.
        """
        node = self._node_of(name)
        if node is None:
            if name not in self.blocks:
                names = [*self.layer_names.values(), *getattr(self, "module_names", {}).values()]
                raise ValueError(
                    f"no merged layer or module is named {name!r}; the module names are {names}"
                )
            node = name
            owner = self.layer_names.get(node, getattr(self, "module_names", {}).get(node))
            if owner is not None:
                warnings.warn(
                    f"MergedNetwork.groups({name!r}) names a traced node; name it by its module "
                    f"name: groups({owner!r})",
                    DeprecationWarning,
                    stacklevel=2,
                )
        return self._node_modules(node)

    def _node_of(self, name: str) -> str | None:
        """The traced node of the module ``name``, or ``None``."""
        # getattr: networks pickled before module_names existed name their layers only.
        for names in (self.layer_names, getattr(self, "module_names", {})):
            for node, module_name in names.items():
                if module_name == name:
                    return node
        return None

    def _node_modules(self, node: str) -> nn.ModuleDict:
        """``blocks[node]``: ``{group: module}`` of a traced node."""
        return cast(nn.ModuleDict, self.blocks[node])

    @property
    def output_layer_names(self) -> tuple[str, ...]:
        """Module names of the layers writing the task outputs (never pruned)."""
        return tuple(self.layer_names[node] for node in self.output_layer_nodes)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``x``: the original networks' input ``(B, ...)`` → ``{task: (B, outputs)}``."""
        values: dict[str, dict[str, Tensor]] = {self.input_node: {SHARED: x}}
        for step in self.plan:
            source = values[step.inputs[0]]
            out: dict[str, Tensor] = {}
            if step.kind == "layer":
                for group, module in self._node_modules(step.node).items():
                    out[group] = module(source)
            elif step.kind == "module":
                for group, module in self._node_modules(step.node).items():
                    out[group] = module(source[group])
            elif step.kind == "function":
                function = cast(Callable[..., Tensor], step.function)
                kwargs = dict(step.kwargs)
                for group, value in source.items():
                    out[group] = function(value, *step.args, **kwargs)
            else:
                other = values[step.inputs[1]]
                for group, value in source.items():
                    out[group] = value + other[group] if group in other else value
                for group, value in other.items():
                    if group not in source:
                        out[group] = value
            values[step.node] = out
        final = values[self.output_node]
        return {task: final[self.outputs[task]] for task in self.tasks}

    def for_tasks(self, tasks: Iterable[str]) -> MergedNetwork:
        """A copy that computes only ``tasks``: it holds only the groups they need.

        A group is kept when it serves one of ``tasks``; the groups it reads
        then serve one too, so the copy's outputs equal this network's for
        those tasks while the other tasks' exclusive groups cost nothing.
        """
        selected = _check_subset(tasks, self.tasks)
        result = copy.deepcopy(self)
        for node in result.blocks:
            modules = result._node_modules(node)
            for group in list(modules.keys()):
                if not self.group_tasks[group] & selected:
                    del modules[group]
        result.tasks = tuple(t for t in self.tasks if t in selected)
        result._drop_unused_groups()
        return result

    def without_group(self, layer: str, group: str) -> MergedNetwork:
        """A copy without the group ``group`` of ``layer`` (a module name), and what only it fed.

        The layers reading it lose those inputs (their bias is kept); groups
        left with nothing to read, and groups no output needs any more (an
        exclusive chain's upstream part), go too. Tasks outside the group's
        tasks compute exactly what they did. Raises ``ValueError`` for an
        output layer, an unknown group, or when a task would lose its output.
        """
        node = self._node_of(layer)
        if node is None or node not in self.layer_names:
            raise ValueError(
                f"no merged conv/linear layer is named {layer!r}; the layers are "
                f"{list(self.layer_names.values())}"
            )
        if node in self.output_layer_nodes:
            raise ValueError(f"{layer!r} writes the task outputs; its groups cannot be deleted")
        modules = self._node_modules(node)
        if group not in modules:
            raise ValueError(
                f"layer {layer!r} has no group {group!r}; its groups are {list(modules)}"
            )
        result = copy.deepcopy(self)
        del result._node_modules(node)[group]
        result._drop_unused_groups()
        final = result._present()[result.output_node]
        lost = [t for t in result.tasks if result.outputs[t] not in final]
        if lost:
            raise ValueError(
                f"deleting group {group!r} of layer {layer!r} leaves task(s) {lost} no output"
            )
        return result

    def _present(self) -> dict[str, set[str]]:
        """``{node: groups it outputs}``, read from the current modules."""
        present: dict[str, set[str]] = {self.input_node: {SHARED}}
        for step in self.plan:
            if step.kind in ("layer", "module"):
                present[step.node] = set(self._node_modules(step.node).keys())
            elif step.kind == "function":
                present[step.node] = set(present[step.inputs[0]])
            else:
                present[step.node] = present[step.inputs[0]] | present[step.inputs[1]]
        return present

    def _drop_unreadable(self) -> None:
        """Delete parts reading an absent group (bias moved), groups left with no input."""
        present: dict[str, set[str]] = {self.input_node: {SHARED}}
        for step in self.plan:
            source = present[step.inputs[0]]
            if step.kind == "layer":
                modules = self._node_modules(step.node)
                for group in list(modules.keys()):
                    layer = cast(GroupLayer, modules[group])
                    if not layer.drop_parts(set(layer.parts.keys()) - source):
                        del modules[group]
                present[step.node] = set(modules.keys())
            elif step.kind == "module":
                modules = self._node_modules(step.node)
                for group in list(modules.keys()):
                    if group not in source:
                        del modules[group]
                present[step.node] = set(modules.keys())
            elif step.kind == "function":
                present[step.node] = set(source)
            else:
                present[step.node] = source | present[step.inputs[1]]

    def _drop_unused_groups(self) -> None:
        """Delete the modules of groups no task output depends on (read from the current modules).

        A group can be unused when no group of the next layer may read it (an
        exclusive group before a layer with only a shared group), or once
        ``for_tasks`` or ``without_group`` removed its readers. Torch-Pruning
        does not trace such branches, and they would cost computation for nothing.
        """
        self._drop_unreadable()
        present = self._present()
        live: dict[str, set[str]] = {node: set() for node in present}
        live[self.output_node] |= {self.outputs[t] for t in self.tasks} & present[self.output_node]
        for step in reversed(self.plan):
            used = live[step.node]
            if step.kind == "layer":
                for group in used:
                    module = cast(GroupLayer, self._node_modules(step.node)[group])
                    live[step.inputs[0]] |= set(module.parts.keys()) & present[step.inputs[0]]
            else:
                for node in step.inputs:
                    live[node] |= used & present[node]
        for step in self.plan:
            if step.kind in ("layer", "module"):
                modules = self._node_modules(step.node)
                for group in list(modules.keys()):
                    if group not in live[step.node]:
                        del modules[group]

    def layer_groups(self) -> dict[str, dict[str, GroupLayer]]:
        """``{layer module name: {group: GroupLayer}}`` for every merged conv/linear layer, in order."""
        return {
            self.layer_names[step.node]: {
                g: cast(GroupLayer, m) for g, m in self._node_modules(step.node).items()
            }
            for step in self.plan
            if step.kind == "layer"
        }

    def group_sizes(self) -> dict[str, dict[str, int]]:
        """``{layer module name: {group: neurons}}`` now, for every conv/linear layer in order.

        The last entry is the output layer (one group per task). Earlier
        versions returned a list in this order: ``list(merged.group_sizes().values())``.
        """
        return {
            layer: {group: module.width for group, module in groups.items()}
            for layer, groups in self.layer_groups().items()
        }

    def output_layers(self) -> dict[str, list[nn.Module]]:
        """``{task: the layer modules writing its output}`` (pruners must keep their widths)."""
        return {
            task: [self._node_modules(node)[self.outputs[task]] for node in self.output_layer_nodes]
            for task in self.tasks
        }

    def extra_repr(self) -> str:
        return f"tasks={list(self.tasks)}"


def _check_subset(tasks: Iterable[str], available: tuple[str, ...]) -> frozenset[str]:
    if isinstance(tasks, str):
        raise TypeError(
            f"tasks must be a collection of task names, got the string {tasks!r}; use [{tasks!r}]"
        )
    selected = list(tasks)
    if not selected:
        raise ValueError(f"tasks is empty: select at least one of {list(available)}")
    unknown = [t for t in selected if t not in available]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; this network computes {list(available)}")
    return frozenset(selected)
