"""MTZ's fine-tuning after each zipped layer: the callback, tied per-task copies, read-back.

While ``finetune(network, layer)`` trains the network zipped so far, the
tasks' copies of a zipped neuron (``wiring="released"``, behind a partly
zipped layer) share one parameter for their weights on the zipped inputs and
one for their bias (a ``torch.nn.utils.parametrize`` parametrization): the
gradient is summed over the tasks, as for the authors' single ``W_merged``.
Each task's ``W_inter`` stays its own. Afterwards the parametrizations are
removed (values kept) and every conv/linear weight is written back into the
tasks' copies (:func:`read_back`, the inverse of ``block_diagonal``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from cut_plugin.training import train_tasks
from cut_plugin.vocabulary import Loss, check_choice, check_int, check_number, index_tensor
from pam_plugin.architecture import tensor_attribute
from pam_plugin.construction import Prepared
from pam_plugin.grouping import SHARED, GroupKey, Neuron, group_name
from pam_plugin.merged import GroupLayer, MergedNetwork
from pam_plugin.training import OPTIMIZERS, Optimizer

__all__ = ["Finetune", "MTZFinetuning", "read_back", "tie_copies", "untie"]

Finetune = Callable[[MergedNetwork, str], "MergedNetwork | None"]
"""``finetune(network, layer)``: trains the network zipped up to ``layer`` in place (or returns it)."""
Groups = dict[int, dict[GroupKey, list[Neuron]]]


@dataclass(frozen=True, eq=False)
class MTZFinetuning:
    """MTZ's fine-tuning after each zipped layer: ``steps`` steps of the one training loop.

    ``MTZMerger(finetune=MTZFinetuning(batches, losses, steps={"fc1": 2000}))``.
    Defaults follow the released script: plain SGD, ``lr=0.01``, on the summed
    task losses (:func:`cut_plugin.training.train_tasks`).

    Args:
        batches: ``(inputs, {task: target})`` pairs, re-iterated as needed.
        losses: ``{task: loss_fn(output, target)}``.
        steps: optimiser steps after every zipped layer, or ``{layer module
            name: steps}`` (unlisted layers: 0; the released VGG table is 50–5000).
        lr, optimizer, momentum: ``"sgd"`` (with ``momentum``) or ``"adam"``.
        progress: show a progress bar.
    """

    batches: Any
    losses: Mapping[str, Loss]
    steps: int | Mapping[str, int] = 100
    lr: float = 0.01
    optimizer: Optimizer = "sgd"
    momentum: float = 0.0
    progress: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.steps, Mapping):
            for name, value in self.steps.items():
                check_int(f"steps[{name!r}]", value, low=0)
            object.__setattr__(self, "steps", dict(self.steps))
        else:
            check_int("steps", self.steps, low=0)
        check_number("lr", self.lr, low=0.0, low_open=True)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_number("momentum", self.momentum, low=0.0)

    def check_layers(self, layers: Sequence[str]) -> None:
        """Raise when ``steps`` names a layer not in ``layers`` (the mergeable layers)."""
        if isinstance(self.steps, Mapping):
            unknown = [name for name in self.steps if name not in layers]
            if unknown:
                raise ValueError(
                    f"MTZFinetuning steps names unknown layer(s) {unknown}; the mergeable "
                    f"layers are {list(layers)}"
                )

    def __call__(self, network: MergedNetwork, layer: str) -> None:
        steps = self.steps.get(layer, 0) if isinstance(self.steps, Mapping) else self.steps
        if not steps:
            return

        def build(parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
            if self.optimizer == "adam":
                return torch.optim.Adam(parameters, lr=self.lr)
            return torch.optim.SGD(parameters, lr=self.lr, momentum=self.momentum)

        train_tasks(
            network, self.batches, self.losses, steps=steps, optimizer=build,
            progress=self.progress, desc=f"MTZ fine-tuning after {layer}",
        )  # fmt: skip


class _TiedBlock(nn.Module):
    """Parametrization: the first ``rows`` rows (and ``columns`` columns) are ``shared``."""

    def __init__(self, shared: nn.Parameter, rows: int, columns: int | None) -> None:
        super().__init__()
        self.shared = shared
        self.rows, self.columns = rows, columns

    def forward(self, original: Tensor) -> Tensor:
        result = original.clone()
        if self.columns is None:
            result[: self.rows] = self.shared
        else:
            result[: self.rows, : self.columns] = self.shared
        return result


def tie_copies(
    network: MergedNetwork,
    prepared: Prepared,
    zipped: Mapping[int, Sequence[Neuron]],
    split: set[int],
) -> None:
    """Tie the tasks' copies of each per-task zipped neuron: weights on zipped inputs, bias."""
    arch, tasks = prepared.architecture, prepared.tasks
    for step in arch.steps:
        if step.kind != "layer" or step.space not in split:
            continue
        source = arch.space_of(step.inputs[0]).index
        count = len(zipped[step.space])
        columns = len(zipped[source]) * arch.factor(step.inputs[0]) if source in split else None
        modules = cast(nn.ModuleDict, network.blocks[step.node])
        parts: list[nn.Module] = []
        for task in tasks:
            name = group_name(frozenset({task}), tasks)
            read = SHARED if columns is None else name
            if name in modules and read in cast(GroupLayer, modules[name]).parts:
                parts.append(cast(GroupLayer, modules[name]).parts[read])
        if len(parts) < 2:
            continue
        for attribute in ("weight", "bias"):
            value = getattr(parts[0], attribute)
            if not isinstance(value, Tensor):
                continue
            block = (
                value[:count] if columns is None or attribute == "bias" else value[:count, :columns]
            )
            shared = nn.Parameter(block.detach().clone())
            width = None if attribute == "bias" else columns
            for part in parts:
                parametrize.register_parametrization(
                    part, attribute, _TiedBlock(shared, count, width)
                )


def read_back(network: MergedNetwork, prepared: Prepared, groups: Groups) -> None:
    """Write every conv/linear weight of ``network`` into its members' copies (inverse of build)."""
    arch, tasks = prepared.architecture, prepared.tasks
    keys = {group_name(k, tasks): k for space in groups.values() for k in space}
    with torch.no_grad():
        for step in arch.steps:
            if step.kind != "layer":
                continue
            modules = cast(nn.ModuleDict, network.blocks[step.node])
            inputs = groups[arch.space_of(step.inputs[0]).index]
            for key, rows in groups[step.space].items():
                name = group_name(key, tasks)
                if name not in modules:
                    continue
                for part_name, part in cast(GroupLayer, modules[name]).parts.items():
                    _scatter(
                        prepared.layer(step), rows, inputs[keys[part_name]], part,
                        arch.factor(step.inputs[0]),
                    )  # fmt: skip


def _scatter(
    layers: Mapping[str, nn.Module],
    rows: Sequence[Neuron],
    columns: Sequence[Neuron],
    part: nn.Module,
    factor: int,
) -> None:
    """One part's weights (and bias) back into each member's copy: the inverse of ``block_diagonal``."""
    weight = tensor_attribute(part, "weight")
    kernel = tuple(weight.shape[2:])
    block = weight.reshape(len(rows), len(columns), factor, *kernel)
    bias = getattr(part, "bias", None)
    row_members = [dict(n) for n in rows]
    column_members = [dict(n) for n in columns]
    for task, layer in layers.items():
        row_pos = [p for p, members in enumerate(row_members) if task in members]
        col_pos = [q for q, members in enumerate(column_members) if task in members]
        if not row_pos:
            continue
        target = tensor_attribute(layer, "weight")
        row_src = index_tensor([row_members[p][task] for p in row_pos], target)
        view = target.view(target.shape[0], -1, factor, *kernel)
        if col_pos:
            col_src = index_tensor([column_members[q][task] for q in col_pos], target)
            picked = block[
                index_tensor(row_pos, block)[:, None], index_tensor(col_pos, block)[None, :]
            ]
            view[row_src[:, None], col_src[None, :]] = picked.to(target.dtype)
        if isinstance(bias, Tensor):
            tensor_attribute(layer, "bias")[row_src] = bias[row_pos].to(target.dtype)


def untie(network: nn.Module) -> None:
    """Remove every parametrization of ``network``, keeping the current values."""
    for module in list(network.modules()):
        if parametrize.is_parametrized(module):
            for name in list(cast(nn.ModuleDict, module.parametrizations).keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
