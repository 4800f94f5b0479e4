"""Taylor gate scores of a merged network's neurons: the released PAM pruner's criterion.

The released PAM code (``MrDavidG/PruneFramework``, ``model_combined_gate.py``)
multiplies every hidden conv/linear output channel by a gate ``g = 1`` (after
the BatchNorm it folds into the conv, before the activation) and scores a
neuron by the first-order Taylor term of the gate (Molchanov et al., "Importance
Estimation for Neural Network Pruning", CVPR 2019):

    s[c] = mean over batches b of | ∂L^b/∂g_c | = | Σ_{n, spatial} a[n, c, …] · ∂L^b/∂a[n, c, …] |

with ``L`` the summed task losses and ``a`` the channel's output at the gate.
The batches are the ones the pruning iteration trains on (10 batches of
SGD-Nesterov at lr 0.01): the scores are read on the same forward and backward
passes that train. One iteration then removes every neuron scored at or below
one threshold across all layers: the 9th percentile of the **shared** group's
scores (exclusive groups are never pruned for VGG/LeNet; the single networks
are pruned by 10 % of all their neurons per iteration, globally).

Here:
- :class:`GateRecorder` records the scores while it is active (a context
  manager around any training loop, e.g. :func:`pam_plugin.retrain`); it does
  not change what the network computes. The gate point of a layer's group is
  its output after the BatchNorm steps that directly follow it (the released
  code's folded BatchNorm), else the conv/linear output; the recorded output is
  handed on as a copy, so an in-place activation after it cannot change ``a``.
- :func:`gate_keep` turns scores into the neurons kept by one global threshold
  over the groups :func:`pruned_groups_of` selects (``"shared"``: the groups
  serving several tasks, and every group of a single network; ``"all"``:
  every hidden group). Ties at the threshold go, as released; a group left
  with no neuron keeps its best one (Torch-Pruning keeps ≥ 1 channel per layer
  and group; :func:`pam_plugin.delete_groups` removes whole groups).
- Output layers are never scored or pruned (their widths are the tasks' outputs).

Physical pruning is in ``adapters.torch_pruning.prune_merged_gates``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from pam_plugin.merged import GroupLayer, MergedNetwork

__all__ = [
    "GATE_GROUPS",
    "GateRecorder",
    "GateScores",
    "check_fraction",
    "gate_keep",
    "pruned_groups_of",
]

GateGroups = Literal["shared", "all"]
GATE_GROUPS: tuple[GateGroups, ...] = ("shared", "all")
GateScores = dict[str, dict[str, Tensor]]
"""``{layer module name: {group: Tensor(neurons,)}}``."""


def _check_merged(merged: Any) -> MergedNetwork:
    if not isinstance(merged, MergedNetwork):
        raise TypeError(f"merged must be a pam_plugin.MergedNetwork, got {type(merged).__name__}")
    return merged


def pruned_groups_of(merged: MergedNetwork, which: str = "shared") -> dict[str, list[str]]:
    """``{layer module name: [group, ...]}`` of the hidden groups a pruner may thin.

    ``"shared"``: groups serving two or more tasks (PAM's shared group ``C``, MTZ's
    zipped neurons) and, in a one-task network, every group (the released code
    prunes a single network's every neuron); ``"all"``: every hidden group.
    Output layers never appear.
    """
    _check_merged(merged)
    if which not in GATE_GROUPS:
        raise ValueError(f"pruned_groups must be one of {list(GATE_GROUPS)}, got {which!r}")
    everyone = frozenset(merged.tasks)
    outputs = set(merged.output_layer_names)
    chosen: dict[str, list[str]] = {}
    for layer, groups in merged.layer_groups().items():
        if layer in outputs:
            continue
        names = [
            g
            for g in groups
            if which == "all"
            or len(merged.group_tasks[g]) >= 2
            or merged.group_tasks[g] == everyone
        ]
        if names:
            chosen[layer] = names
    return chosen


def _modules(merged: MergedNetwork, node: str) -> nn.ModuleDict:
    """``{group: module}`` of a traced node."""
    return cast(nn.ModuleDict, merged.blocks[node])


def _gate_nodes(merged: MergedNetwork) -> dict[str, str]:
    """``{layer node: node whose per-group modules output the gate}`` for the hidden layers."""
    hidden = {n for n in merged.layer_names if n not in merged.output_layer_nodes}
    readers: dict[str, list[Any]] = {}
    for step in merged.plan:
        for source in step.inputs:
            readers.setdefault(source, []).append(step)
    gates: dict[str, str] = {}
    for node in hidden:
        current = node
        while True:
            following = [s for s in readers.get(current, []) if s.kind == "module"]
            nxt = following[0] if len(readers.get(current, [])) == 1 and following else None
            if nxt is None:
                break
            modules = _modules(merged, nxt.node)
            if not modules or not all(
                isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules.values()
            ):
                break
            current = nxt.node
        gates[node] = current
    return gates


class GateRecorder:
    """Record the Taylor gate scores of ``merged``'s hidden neurons while active.

    ``with GateRecorder(merged) as gates: <train merged>``; then
    ``gates.scores()`` is ``{layer: {group: mean over recorded batches of |Σ a·∂L/∂a|}}``.
    A batch is recorded when a forward runs with gradients enabled and its
    backward reaches the gate (a neuron whose gradient never arrives scores 0,
    as released). Forwards without gradients (evaluation) are not counted.
    """

    def __init__(self, merged: MergedNetwork) -> None:
        self.merged = _check_merged(merged)
        self._sums: dict[tuple[str, str], Tensor] = {}
        self._batches = 0
        self._handles: list[Any] = []

    def __enter__(self) -> GateRecorder:
        merged = self.merged
        linear = {
            node
            for node in merged.layer_names
            for m in _modules(merged, node).values()
            if isinstance(m, GroupLayer) and isinstance(next(iter(m.parts.values())), nn.Linear)
        }
        for layer_node, gate_node in _gate_nodes(merged).items():
            name = merged.layer_names[layer_node]
            for group, module in _modules(merged, gate_node).items():
                hook = self._hook((name, group), layer_node in linear)
                self._handles.append(module.register_forward_hook(hook))
        self._handles.append(merged.register_forward_pre_hook(self._count))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _count(self, _module: nn.Module, _args: Any) -> None:
        if torch.is_grad_enabled():
            self._batches += 1

    def _hook(self, key: tuple[str, str], linear: bool) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Tensor) -> Tensor | None:
            if not (torch.is_grad_enabled() and output.requires_grad):
                return None
            value = output.detach()
            channel = output.dim() - 1 if linear else min(1, output.dim() - 1)
            dims = [d for d in range(output.dim()) if d != channel]

            def accumulate(grad: Tensor) -> None:
                with torch.no_grad():
                    term = (value * grad).sum(dim=dims) if dims else value * grad
                    term = term.abs().to(torch.float64)
                    self._sums[key] = self._sums[key] + term if key in self._sums else term

            output.register_hook(accumulate)
            return output.clone()  # an in-place op later must not change the recorded ``a``

        return hook

    @property
    def batches(self) -> int:
        """Forwards with gradients enabled seen so far (the denominator of the mean)."""
        return self._batches

    def scores(self) -> GateScores:
        """``{layer module name: {group: Tensor(neurons,)}}`` (float64), the mean per batch.

        Raises ``RuntimeError`` when no batch was recorded (nothing trained with
        gradients inside the ``with`` block).
        """
        if not self._batches:
            raise RuntimeError(
                "GateRecorder saw no forward with gradients; train the merged network inside "
                "`with GateRecorder(merged):` (e.g. pam_plugin.retrain(merged, ..., inplace=True))"
            )
        merged = self.merged
        result: GateScores = {}
        for layer, groups in merged.layer_groups().items():
            if layer in merged.output_layer_names:
                continue
            result[layer] = {}
            for group, module in groups.items():
                total = self._sums.get((layer, group))
                if total is None:
                    device = next(module.parameters()).device
                    total = torch.zeros(module.width, dtype=torch.float64, device=device)
                result[layer][group] = total / self._batches
        return result


def check_fraction(value: Any, *, name: str = "fraction") -> float:
    """``value`` as a float in [0, 1) (the share of neurons removed), or a ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1) (the share removed), got {value!r}")
    return float(value)


def gate_keep(
    merged: MergedNetwork,
    scores: Mapping[str, Mapping[str, Tensor]],
    fraction: float,
    *,
    pruned_groups: str = "shared",
) -> dict[str, dict[str, Tensor]]:
    """``{layer: {group: bool Tensor}}``, the neurons one global threshold keeps.

    The threshold is the ``int(n · fraction)``-th smallest of the ``n`` scores of
    the groups ``pruned_groups_of(merged, pruned_groups)`` selects, across every
    layer; a neuron is kept when its score is above it (the released rule:
    ties go). A group left empty keeps its best neuron. Only those groups appear.
    """
    _check_merged(merged)
    fraction = check_fraction(fraction)
    chosen = pruned_groups_of(merged, pruned_groups)
    sizes = merged.group_sizes()
    values: list[Tensor] = []
    for layer, groups in chosen.items():
        for group in groups:
            score = scores.get(layer, {}).get(group)
            if not isinstance(score, Tensor) or score.shape != (sizes[layer][group],):
                got = None if not isinstance(score, Tensor) else tuple(score.shape)
                raise ValueError(
                    f"scores has no ({sizes[layer][group]},) tensor for layer {layer!r} group "
                    f"{group!r} (got {got}); record them with GateRecorder on this network"
                )
            values.append(score.detach().flatten().to(torch.float64))
    if not values:
        return {}
    ranked = torch.sort(torch.cat(values)).values
    threshold = ranked[int(len(ranked) * fraction)] if fraction > 0 else None
    keep: dict[str, dict[str, Tensor]] = {}
    for layer, groups in chosen.items():
        keep[layer] = {}
        for group in groups:
            score = scores[layer][group].detach().to(torch.float64)
            kept = (
                torch.ones_like(score, dtype=torch.bool) if threshold is None else score > threshold
            )
            if not bool(kept.any()):
                kept[int(torch.argmax(score))] = True
            keep[layer][group] = kept
    return keep
