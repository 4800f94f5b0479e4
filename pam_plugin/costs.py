"""Computation of every task combination (PAM step 7): MACs and parameters, merged or not.

The cost of running the tasks ``S`` is the conv/linear multiply-accumulates
of one input sample and the parameter count of what must be held:

- a :class:`MergedNetwork`: ``model.for_tasks(S)`` (the shared groups plus the
  exclusive groups of the tasks in ``S``; the others' groups switched off);
- independent networks ``{task: network}`` (no merging): ``Σ_{t ∈ S} cost(t)``.

So for a merged network ``cost(S) <= cost(S ∪ T) <= cost(S) + cost(T)``.

Implementation notes: MACs are counted with forward hooks on
``Conv1d``/``Conv2d``/``Linear`` (and their subclasses): conv ``out · C_in /
groups · k``, linear ``out · in_features``, per sample; biases, BatchNorm,
activations, pooling and additions are not counted (as Torch-Pruning's
counter). Parameters are all of the module's parameters.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cut_plugin.vocabulary import as_example_inputs, check_tasks
from pam_plugin.merged import MergedNetwork

__all__ = ["Cost", "combination_costs", "network_cost"]


@dataclass(frozen=True)
class Cost:
    """Per-sample conv/linear ``macs`` and ``params`` (all parameters held)."""

    macs: int
    params: int

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.macs + other.macs, self.params + other.params)


def _inputs(example_inputs: Any, network: nn.Module) -> tuple[Tensor, ...]:
    """Example inputs as a tuple of Tensors whose first has a batch dimension (costs are per sample),
    on ``network``'s device and in its dtype."""
    inputs = as_example_inputs(example_inputs, network, tensors_only=True)
    if inputs[0].dim() < 1:
        raise TypeError("example_inputs must be a Tensor (B, ...) or a tuple of Tensors")
    return inputs


def network_cost(network: nn.Module, example_inputs: Any) -> Cost:
    """The :class:`Cost` of one forward of ``network`` per sample of ``example_inputs``.

    The network runs once in eval mode without gradients; its mode is restored.
    """
    if not isinstance(network, nn.Module):
        raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}")
    inputs = _inputs(example_inputs, network)
    batch = inputs[0].shape[0]
    total = 0

    def count(module: nn.Module, _: Any, output: Tensor) -> None:
        nonlocal total
        per_sample = output.numel() // batch
        if isinstance(module, nn.Linear):
            total += per_sample * module.in_features
        elif isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            kernel = 1
            for side in module.kernel_size:
                kernel *= side
            total += per_sample * (module.in_channels // module.groups) * kernel

    layers = [
        m for m in network.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)
    ]
    handles = [m.register_forward_hook(count) for m in layers]
    was_training = network.training
    try:
        network.eval()
        with torch.no_grad():
            network(*inputs)
    finally:
        network.train(was_training)
        for handle in handles:
            handle.remove()
    return Cost(total, sum(p.numel() for p in network.parameters()))


def combination_costs(
    model_or_networks: MergedNetwork | Mapping[str, nn.Module],
    example_inputs: Any,
    *,
    tasks: Sequence[str] | None = None,
) -> dict[frozenset[str], Cost]:
    """``{task combination: Cost}`` for all ``2^N − 1`` non-empty combinations of ``tasks``.

    ``model_or_networks``: a :class:`MergedNetwork` or independent networks
    ``{task: network}``; ``tasks`` defaults to all of them. Combinations are
    ordered by size, then by task order.
    """
    if isinstance(model_or_networks, MergedNetwork):
        available = list(model_or_networks.tasks)
    elif isinstance(model_or_networks, Mapping) and model_or_networks:
        available = list(model_or_networks)
    else:
        raise TypeError(
            "model_or_networks must be a MergedNetwork or a non-empty mapping {task: network}, got "
            f"{type(model_or_networks).__name__}"
        )
    chosen = available if tasks is None else check_tasks(tasks, available)
    combinations = [
        frozenset(c)
        for size in range(1, len(chosen) + 1)
        for c in itertools.combinations(chosen, size)
    ]
    if isinstance(model_or_networks, MergedNetwork):
        merged = model_or_networks
        return {c: network_cost(merged.for_tasks(c), example_inputs) for c in combinations}
    single = {t: network_cost(model_or_networks[t], example_inputs) for t in chosen}
    return {c: sum((single[t] for t in c), Cost(0, 0)) for c in combinations}
