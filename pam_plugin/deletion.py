"""Deleting whole groups of a merged network (a layer's group, an exclusive chain) while a check holds.

A channel pruner keeps at least one channel per layer and group (Torch-Pruning
does), so a one-channel exclusive chain still costs about one conv channel
per layer at full resolution. :func:`delete_groups` removes whole groups:

    repeat  for each hidden layer's group g, by the MACs deleting it saves (largest first):
                candidate = merged.without_group(layer, g)
                if accept(candidate): merged = candidate
    until a pass deletes nothing

Deleting task ``t``'s exclusive group at the last hidden layer deletes its
whole exclusive chain (the exclusive groups before it fed only it); ``t`` then
runs on the shared groups. ``accept`` is the caller's check, e.g. every
task's validation accuracy within a tolerance of its single-task network.

Implementation notes: each deletion is checked on the example inputs: the
tasks outside the deleted group's tasks must compute exactly what they did
(``RuntimeError`` otherwise). No retraining happens here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from cut_plugin.vocabulary import as_example_inputs
from pam_plugin.costs import network_cost
from pam_plugin.merged import MergedNetwork

__all__ = ["delete_groups", "group_deletions"]


def group_deletions(
    merged: MergedNetwork, example_inputs: Any
) -> list[tuple[str, str, MergedNetwork, int]]:
    """Every possible single deletion: ``(layer, group, network without it, MACs saved)``.

    Largest saving first; deletions that would leave a task no output are left out.
    """
    macs = network_cost(merged, example_inputs).macs
    outputs = set(merged.output_layer_names)
    found = []
    for layer, groups in merged.layer_groups().items():
        if layer in outputs:
            continue
        for group in groups:
            try:
                candidate = merged.without_group(layer, group)
            except ValueError:
                continue
            found.append(
                (layer, group, candidate, macs - network_cost(candidate, example_inputs).macs)
            )
    return sorted(found, key=lambda item: -item[3])


def delete_groups(
    merged: MergedNetwork,
    example_inputs: Any,
    *,
    accept: Callable[[MergedNetwork], bool],
    max_deletions: int | None = None,
) -> tuple[MergedNetwork, list[dict[str, Any]]]:
    """``merged`` with whole groups deleted while ``accept`` holds, and what was deleted.

    Args:
        merged: a merged network (left untouched).
        example_inputs: ``x`` or ``(x,)``, a batch ``(B, ...)`` (costs and the self-check).
        accept: ``accept(candidate) -> bool``: keep this deletion?
        max_deletions: stop after this many deletions (``None``: no limit).

    Returns the network and ``[{"layer", "group", "macs_saved"}]`` in deletion order.
    """
    if not isinstance(merged, MergedNetwork):
        raise TypeError(f"merged must be a pam_plugin.MergedNetwork, got {type(merged).__name__}")
    if not callable(accept):
        raise TypeError(f"accept must be a callable (MergedNetwork) -> bool, got {accept!r}")
    inputs = as_example_inputs(example_inputs, merged, tensors_only=True)
    deleted: list[dict[str, Any]] = []
    current = merged
    # passes over the candidates by saving (costs computed once per pass), until one deletes nothing
    while max_deletions is None or len(deleted) < max_deletions:
        before = len(deleted)
        for layer, group, _, saved in group_deletions(current, inputs):
            if saved <= 0 or (max_deletions is not None and len(deleted) >= max_deletions):
                break
            if group not in current.layer_groups().get(layer, {}):
                continue  # gone with an earlier deletion of this pass
            try:
                candidate = current.without_group(layer, group)
            except ValueError:
                continue
            if accept(candidate):
                _check_untouched(current, candidate, group, inputs[0])
                macs = network_cost(current, inputs).macs - network_cost(candidate, inputs).macs
                current = candidate
                deleted.append({"layer": layer, "group": group, "macs_saved": macs})
        if len(deleted) == before:
            break
    return current, deleted


@torch.no_grad()
def _check_untouched(
    before: MergedNetwork, after: MergedNetwork, group: str, x: torch.Tensor
) -> None:
    """The tasks the deleted group does not serve compute what they did on ``x``."""
    served = before.group_tasks[group]
    others = [t for t in before.tasks if t not in served]
    if not others:
        return
    modes = before.training, after.training
    before.eval(), after.eval()
    try:
        old, new = before(x), after(x)
    finally:
        before.train(modes[0]), after.train(modes[1])
    changed = [t for t in others if not torch.allclose(old[t], new[t], rtol=1e-5, atol=1e-6)]
    if changed:
        raise RuntimeError(
            f"deleting group {group!r} changed the outputs of task(s) {changed}, which it does "
            "not serve; this is a bug in MergedNetwork.without_group"
        )
