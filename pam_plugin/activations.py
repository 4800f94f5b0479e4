"""Activations of a traced network on shared inputs, per channel space (PAM step 1).

PAM measures each neuron by its value after the activation; a linear feature
is taken as is, a conv channel is summarised per sample by ``summary``:

- ``"max"``: its global spatial max, one value (what the authors' code
  intends; its guard ``len(x[0]) == 4`` never holds, so it never runs);
- ``"map"``: its whole flattened ``H·W`` map (what the authors' code really
  measures). Squared distances then add up over ``H·W`` positions, so MI
  values, and the α that selects a given set, are on a much larger scale
  (the official α: 0.2/0.15 for LeNet-5, 7/6 and 8.13/8.6 for VGG-16). A space written at several points (a ResNet
stage: the stem and every block's addition) is measured at each of its
activations; the values are stacked on a last axis, so a neuron is a
``k``-vector per sample and its squared distances add up over the ``k``
points (what the mutual-information estimator uses).

Implementation notes: a hidden space with no activation after its layer is
measured at its layers' outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch
from torch import Tensor, fx

from cut_plugin.parallel import several_ranks
from cut_plugin.vocabulary import model_device_dtype
from pam_plugin.architecture import Architecture

__all__ = ["SUMMARIES", "Summary", "channel_values", "record_activations", "run_with_taps"]

Summary = Literal["max", "map"]
SUMMARIES: tuple[Summary, ...] = ("max", "map")


class _TappedInterpreter(fx.Interpreter):
    """Runs a graph module and hands chosen nodes' outputs to callbacks."""

    def __init__(
        self, module: fx.GraphModule, taps: Mapping[str, Callable[[Tensor], None]]
    ) -> None:
        super().__init__(module)
        self.taps = taps

    def run_node(self, n: fx.Node) -> object:
        value = super().run_node(n)
        tap = self.taps.get(n.name)
        if tap is not None:
            tap(value)
        return value


def run_with_taps(
    graph_module: fx.GraphModule,
    inputs: Tensor,
    taps: Mapping[str, Callable[[Tensor], None]],
    *,
    batch_size: int = 128,
) -> None:
    """Run ``graph_module`` on ``inputs`` ``(B, ...)`` in batches, without gradients, feeding ``taps``.

    ``taps``: ``{fx node name: callback(batch output)}``, called once per batch.
    """
    device, dtype = model_device_dtype(graph_module)
    with torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            batch = inputs[start : start + batch_size].to(device=device, dtype=dtype)
            _TappedInterpreter(graph_module, taps).run(batch)


def channel_values(value: Tensor, factor: int, summary: Summary = "max") -> Tensor:
    """Per channel and sample: ``(b, C·factor, *spatial)`` → ``(b, C, m)``.

    ``summary="max"``: ``m = 1``, the max over the rest; ``"map"``: the rest
    flattened (``m = factor·H·W``, 1 for a plain linear feature).
    """
    if value.dim() > 2:
        rest = value.flatten(2)
    else:
        rest = value.reshape(value.shape[0], -1, max(1, factor))
    if summary == "map":
        return rest
    return rest.amax(dim=2, keepdim=True)


def _floating(value: Tensor) -> Tensor:
    return value.to(torch.promote_types(value.dtype, torch.float32))


def record_activations(
    graph_module: fx.GraphModule,
    architecture: Architecture,
    inputs: Tensor,
    *,
    batch_size: int = 128,
    network: str = "network",
    summary: Summary = "max",
) -> dict[int, Tensor]:
    """``{hidden space index: (B, d, k) float tensor}`` of post-activation channel values.

    ``inputs``: ``(B, ...)``; ``k`` is the number of points where the space is
    measured (1 except in residual stages) times the values per point
    (``summary="map"``: a conv channel's ``H·W``). Raises ``ValueError`` naming the
    network and layer when a value is NaN or infinite.
    """
    points: dict[str, int] = {}
    for space in architecture.hidden_spaces:
        for node in space.recorders or space.producers:
            points[node] = space.index
    chunks: dict[str, list[Tensor]] = {node: [] for node in points}

    def tap(node: str) -> Callable[[Tensor], None]:
        factor = architecture.factor(node)
        return lambda value: chunks[node].append(
            _floating(channel_values(value, factor, summary)).cpu()
        )

    run_with_taps(graph_module, inputs, {node: tap(node) for node in points}, batch_size=batch_size)
    result: dict[int, Tensor] = {}
    for space in architecture.hidden_spaces:
        nodes = space.recorders or space.producers
        values = torch.cat([torch.cat(chunks[node]) for node in nodes], dim=2)
        if not torch.isfinite(values).all():
            raise ValueError(
                f"activations of network {network!r} after layer {space.name!r} are NaN or infinite; "
                "check the network's weights and the inputs"
            )
        result[space.index] = values
    return result


def gather_samples(value: Tensor) -> Tensor:
    """Concatenate ``value`` (samples first) over the ranks of an initialised process group.

    Data-parallel PAM: each rank records activations (and labels) on its shard of
    the inputs; the statistics need every sample, so the shards are gathered in
    rank order and every rank runs the same search on the same data. Shards may
    have different sizes. Without ``torch.distributed`` (or with one rank) returns
    ``value`` unchanged.
    """
    if not several_ranks():
        return value
    dist = torch.distributed
    shards: list[Tensor | None] = [None] * dist.get_world_size()
    dist.all_gather_object(shards, value.cpu())
    return torch.cat([shard for shard in shards if shard is not None]).to(value.device)
