"""The released PAM pruner on a merged network: Taylor gates, one global threshold, physical removal.

One call is one pruning iteration of the released code (``pam_plugin.gates``):
train a copy of the merged network on ``data`` (SGD with Nesterov momentum, lr
0.01, one optimiser step per batch) while recording every hidden neuron's
Taylor gate score on the same passes, then remove the neurons at or below one
threshold across every layer — ``pruning_ratio`` (0.09 released) of the
selected groups' neurons — physically, through Torch-Pruning::

    from adapters.torch_pruning import prune_merged_gates
    for _ in range(30):  # the released LeNet schedule: 30 iterations, then fine-tuning
        merged = prune_merged_gates(merged, x[:2], data=ten_batches, losses=losses)

``pruned_groups="shared"`` (released for VGG/LeNet) thins only the groups
serving several tasks, and every group of a one-task network (a single network
wrapped by ``build_merged``); ``"all"`` every hidden group.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from adapters.torch_pruning.compaction import prune_by_masks
from cut_plugin.vocabulary import Loss
from pam_plugin import (
    GateRecorder,
    MergedNetwork,
    delete_groups,
    gate_keep,
    pruned_groups_of,
    retrain,
)
from pam_plugin.gates import check_fraction

__all__ = ["prune_merged_gates", "remove_neurons"]


def remove_neurons(
    merged: MergedNetwork, example_inputs: Any, keep: Mapping[str, Mapping[str, Tensor]]
) -> MergedNetwork:
    """A physically smaller copy of ``merged`` without the neurons ``keep`` marks False.

    ``keep``: ``{layer module name: {group: bool Tensor(neurons,)}}`` (e.g.
    :func:`pam_plugin.gates.gate_keep`); groups not named keep every neuron. The
    copy is checked on ``example_inputs`` against ``merged`` with those neurons
    masked (``prune_by_masks``). A channel that a residual addition couples to other
    groups' channels goes only when every coupled producer drops it.
    """
    if not isinstance(merged, MergedNetwork):
        raise TypeError(f"merged must be a pam_plugin.MergedNetwork, got {type(merged).__name__}")
    layers = merged.layer_groups()
    names = {id(p): n for n, p in merged.named_parameters()}
    masks: dict[str, Tensor] = {}
    for layer, groups in keep.items():
        if layer not in layers or layer in merged.output_layer_names:
            raise ValueError(
                f"keep names {layer!r}, not a hidden layer of the merged network; its hidden "
                f"layers are {[n for n in layers if n not in merged.output_layer_names]}"
            )
        for group, kept in groups.items():
            module = layers[layer].get(group)
            if module is None:
                raise ValueError(
                    f"layer {layer!r} has no group {group!r}; it has {list(layers[layer])}"
                )
            if (
                not isinstance(kept, Tensor)
                or kept.dtype != torch.bool
                or kept.shape != (module.width,)
            ):
                raise ValueError(
                    f"keep[{layer!r}][{group!r}] must be a bool tensor of shape ({module.width},)"
                )
            if not bool(kept.any()):
                raise ValueError(
                    f"keep[{layer!r}][{group!r}] keeps no neuron; keep at least one, or delete the "
                    f"group with merged.without_group({layer!r}, {group!r})"
                )
            if bool(kept.all()):
                continue
            for part in module.parts.values():
                for name in ("weight", "bias"):
                    param = getattr(part, name, None)
                    if isinstance(param, Tensor) and id(param) in names:
                        shape = (module.width,) + (1,) * (param.dim() - 1)
                        masks[names[id(param)]] = kept.reshape(shape)
    if not masks:
        return copy.deepcopy(merged)
    pruned = prune_by_masks(merged, masks, example_inputs)
    assert isinstance(pruned, MergedNetwork)
    return pruned


def prune_merged_gates(
    merged: MergedNetwork,
    example_inputs: Any,
    *,
    data: Iterable[tuple[Any, Mapping[str, Tensor]]],
    losses: Mapping[str, Loss],
    pruning_ratio: float = 0.09,
    pruned_groups: str = "shared",
    lr: float = 0.01,
    momentum: float = 0.9,
    nesterov: bool = True,
    accept: Callable[[MergedNetwork], bool] | None = None,
) -> MergedNetwork:
    """One released PAM pruning iteration on a copy of ``merged`` (the argument is left untouched).

    Args:
        merged: a merged network (``PAMMerger``, ``MTZMerger``, ``build_merged``).
        example_inputs: ``x`` or ``(x,)``, an input batch for tracing and the check.
        data: the iteration's training batches ``(inputs, {task: target})``
            (10 in the released code); each is one SGD step and one gate reading.
        losses: ``{task: loss_fn}``; the summed loss is trained and scored.
        pruning_ratio: the fraction of the selected groups' neurons at or below
            the global threshold that go (0.09 for merged networks, 0.10 for
            single networks in the released code).
        pruned_groups: ``"shared"`` or ``"all"`` (:func:`pam_plugin.gates.pruned_groups_of`).
        lr, momentum, nesterov: the training optimiser (SGD).
        accept: as in :func:`prune_merged`: afterwards delete whole groups while it holds.
    """
    if not isinstance(merged, MergedNetwork):
        raise TypeError(f"merged must be a pam_plugin.MergedNetwork, got {type(merged).__name__}")
    check_fraction(pruning_ratio, name="pruning_ratio")
    pruned_groups_of(merged, pruned_groups)  # both checked before the training, not after
    model = copy.deepcopy(merged)
    with GateRecorder(model) as gates:
        retrain(model, data, losses, lr=lr, optimizer="sgd", momentum=momentum,
                nesterov=nesterov, inplace=True, progress=False)  # fmt: skip
    keep = gate_keep(model, gates.scores(), pruning_ratio, pruned_groups=pruned_groups)
    pruned = remove_neurons(model, example_inputs, keep)
    if accept is not None:
        pruned, _ = delete_groups(pruned, example_inputs, accept=accept)
    return pruned
