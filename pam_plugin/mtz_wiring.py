"""MTZ layer by layer, as released: ``W_inter`` wiring, per-layer fine-tuning on tied weights.

The authors' procedure (``Aya73Rei/Multi-Task-Zipping``, ``Final_merge_Exp1.py``),
for each hidden layer ``l`` from the input:

1. per task, the Hessian of layer ``l``'s zipped inputs, measured on the
   network zipped so far (``layer_hessians`` on each task's current copy);
2. the pairs and their weights on the zipped inputs (``pam_plugin.zipping``);
   a zipped neuron keeps, per task ``t``, ``t``'s own weights from ``t``'s
   unzipped inputs (``W_inter_t``); an unzipped neuron keeps all its weights;
3. ``finetune(network, layer)`` on the network zipped so far, the zipped
   weights and biases tied across the tasks.

State: each task's copy in ``Prepared`` always equals that task's path
through the zipped network (zipped rows written into every member's copy), so
the merged network is rebuilt from the copies with :func:`build_network` and
read back into them after fine-tuning.

Layout of a zipped layer (``released``): when every input of its zipped
neurons is shared (the input, or a fully zipped shared layer) they form the
shared group; otherwise (``W_inter`` non-empty, or an input already per task)
their values differ per task and each task's group holds its copy of them,
first, then its unzipped neurons. With ``wiring="pam"`` zipped neurons are
always shared and read only zipped inputs (``W_inter`` cut to 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, cast

import torch
from torch import Tensor, nn

from cut_plugin.vocabulary import index_tensor
from pam_plugin.architecture import Architecture, tensor_attribute
from pam_plugin.construction import Prepared, block_diagonal, build_network, space_groups
from pam_plugin.grouping import GroupKey, Neuron
from pam_plugin.merged import MergedNetwork
from pam_plugin.mtz_finetuning import Finetune, MTZFinetuning, read_back, tie_copies, untie
from pam_plugin.zipping import (
    FCCost,
    coefficients,
    fold_batchnorms,
    layer_hessians,
    layer_rule,
    pair_neurons,
    restrict,
    to_layout,
)

__all__ = ["WIRINGS", "Finetune", "MTZFinetuning", "Wiring", "zip_layerwise"]

Wiring = Literal["pam", "released"]
WIRINGS: tuple[Wiring, ...] = ("pam", "released")
Groups = dict[int, dict[GroupKey, list[Neuron]]]


def zip_layerwise(
    prepared: Prepared,
    shares: Mapping[int, float],
    *,
    wiring: Wiring,
    fc_cost: FCCost,
    damping: float,
    batch_size: int,
    finetune: Finetune | None,
) -> tuple[MergedNetwork, dict[int, list[Neuron]]]:
    """Zip ``prepared``'s networks layer by layer; the network and ``{space: zipped neurons}``."""
    arch, tasks = prepared.architecture, prepared.tasks
    counts = {s.index: round(shares[s.index] * s.size) for s in arch.hidden_spaces}
    _check(arch, counts, wiring)
    if isinstance(finetune, MTZFinetuning):
        finetune.check_layers([s.name for s in arch.hidden_spaces])
    fold_batchnorms(prepared)
    zipped: dict[int, list[Neuron]] = {
        0: [tuple((t, c) for t in tasks) for c in range(arch.spaces[0].size)]
    }
    for step in arch.steps:
        space = arch.spaces[step.space]
        source = arch.space_of(step.inputs[0]).index
        if step.kind != "layer" or space.role != "hidden" or not counts[space.index]:
            continue
        if not zipped.get(source):  # wiring="pam": nothing zipped below
            continue
        layers = prepared.layer(step)
        reference = layers[tasks[0]]
        has_bias, factor = reference.bias is not None, arch.factor(step.inputs[0])
        rule = layer_rule(reference, factor, fc_cost)
        columns = {t: [dict(n)[t] for n in zipped[source]] for t in tasks}
        rows = {t: coefficients(layers[t], columns[t], factor) for t in tasks}
        device = tensor_attribute(reference, "weight").device
        metrics = {t: torch.zeros(1, dtype=torch.float64, device=device) for t in tasks}
        if rule != "average":
            node = step.inputs[0]
            for t in tasks:
                hessian = layer_hessians(prepared, t, batch_size, [node])[node]
                metrics[t] = restrict(hessian, columns[t], has_bias)
        neurons, weights = pair_neurons(
            rows, metrics, tasks, counts[space.index], damping, rule, has_bias
        )
        zipped[space.index] = neurons
        layout = to_layout(weights, reference, has_bias)
        _write_zipped(layers, neurons, columns, layout, factor, cut=wiring == "pam")
        if finetune is not None:
            _finetune(prepared, zipped, wiring, finetune, space.name)
    network = _build(prepared, zipped, wiring)[0]
    zipped.pop(0)
    return network, zipped


def _check(arch: Architecture, counts: Mapping[int, int], wiring: Wiring) -> None:
    """Raise for a residual stage, or (released) a zipped layer after one with nothing zipped."""
    for space in arch.hidden_spaces:
        if len(space.producers) > 1:
            names = [arch.step(n).target for n in space.producers]
            raise TypeError(
                f"MTZMerger(wiring='released') and finetune zip along a chain of layers, but the "
                f"residual stage {names} is written by several layers; use wiring='pam' without "
                "finetune for residual networks"
            )
    if wiring != "released":
        return
    for space in arch.hidden_spaces:
        source = arch.space_of(arch.step(space.producers[0]).inputs[0])
        if counts[space.index] and source.role == "hidden" and not counts[source.index]:
            raise ValueError(
                f"share zips {counts[space.index]} neurons of {space.name!r} but none of "
                f"{source.name!r}, the layer before it; MTZ as released zips from the input "
                f"(its zipped neurons must read zipped inputs): give {source.name!r} a share of "
                f"at least 1/{source.size} or {space.name!r} a share of 0"
            )


def _write_zipped(
    layers: Mapping[str, nn.Module],
    neurons: Sequence[Neuron],
    columns: Mapping[str, Sequence[int]],
    layout: tuple[Tensor, Tensor | None],
    factor: int,
    *,
    cut: bool,
) -> None:
    """Write the zipped rows into every member's copy (on the zipped inputs; ``cut``: 0 elsewhere)."""
    weight_rows, bias_rows = layout
    with torch.no_grad():
        for task, layer in layers.items():
            weight = tensor_attribute(layer, "weight")
            view = weight.view(weight.shape[0], -1, factor, *weight.shape[2:])
            rows = index_tensor([dict(n)[task] for n in neurons], weight)
            cols = index_tensor(list(columns[task]), weight)
            block = weight_rows.reshape(len(neurons), len(cols), factor, *weight.shape[2:])
            if cut:
                kept = set(columns[task])
                others = [c for c in range(view.shape[1]) if c not in kept]
                if others:
                    view[rows[:, None], index_tensor(others, weight)[None, :]] = 0
            view[rows[:, None], cols[None, :]] = block
            if bias_rows is not None:
                tensor_attribute(layer, "bias")[rows] = bias_rows


def _build(
    prepared: Prepared, zipped: Mapping[int, Sequence[Neuron]], wiring: Wiring
) -> tuple[MergedNetwork, Groups, set[int]]:
    """The merged network of the current copies; its groups per space; the per-task zipped spaces."""
    arch, tasks = prepared.architecture, prepared.tasks
    everyone = frozenset(tasks)
    assignment: Groups = {}
    overrides: dict[tuple[str, GroupKey], tuple[Tensor, Tensor | None]] = {}
    split: set[int] = set()
    all_shared = {0}
    for step in arch.steps:
        space, source = arch.spaces[step.space], arch.space_of(step.inputs[0]).index
        neurons = list(zipped.get(space.index, []))
        if step.kind != "layer" or space.role != "hidden" or not neurons:
            continue
        taken = {member for n in neurons for member in n}
        rest: dict[str, list[Neuron]] = {
            t: [((t, i),) for i in range(space.size) if (t, i) not in taken] for t in tasks
        }
        if wiring == "pam" or source in all_shared:
            assignment[space.index] = {
                everyone: neurons,
                **{frozenset({t}): rest[t] for t in tasks},
            }
            first = tasks[0]
            rows = [((first, dict(n)[first]),) for n in neurons]
            overrides[(step.node, everyone)] = block_diagonal(
                {first: prepared.layer(step)[first]},
                rows,
                zipped[source],
                arch.factor(step.inputs[0]),
            )
            if len(neurons) == space.size:
                all_shared.add(space.index)
        else:
            own: dict[str, list[Neuron]] = {t: [((t, dict(n)[t]),) for n in neurons] for t in tasks}
            assignment[space.index] = {frozenset({t}): own[t] + rest[t] for t in tasks}
            split.add(space.index)
    return build_network(prepared, assignment, overrides), _groups_of(prepared, assignment), split


def _groups_of(prepared: Prepared, assignment: Groups) -> Groups:
    """Every space's groups as :func:`build_network` builds them from ``assignment``."""
    return space_groups(prepared, assignment)


def _finetune(
    prepared: Prepared,
    zipped: Mapping[int, Sequence[Neuron]],
    wiring: Wiring,
    finetune: Finetune,
    layer: str,
) -> None:
    """Build, tie the per-task copies of zipped neurons, fine-tune, untie, read back."""
    network, groups, split = _build(prepared, zipped, wiring)
    for node in network.blocks:  # folded BatchNorm: an identity in eval mode, kept so
        modules = cast(nn.ModuleDict, network.blocks[node])
        for group, module in list(modules.items()):
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                modules[group] = nn.Identity()
    tie_copies(network, prepared, zipped, split)
    result = finetune(network, layer)
    if result is not None and not isinstance(result, MergedNetwork):
        raise TypeError(
            "finetune(network, layer) must train the network in place and return None, or return "
            f"the trained MergedNetwork; got {type(result).__name__}"
        )
    trained = network if result is None else result
    untie(trained)
    read_back(trained, prepared, groups)
