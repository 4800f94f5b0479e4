"""CUT's fused per-task scores as one NNI metric per pruning target (plain tensors, no NNI).

NNI's pruners turn a metric per block (an element, or an output channel) into masks
with ``generate_sparsity``: the lowest metrics of a target, or of a global or
dependency group, are masked. CUT decides differently: each task keeps its own top
blocks and a shared block survives when the fusion rule says so. This module gives
NNI a metric whose order *is* CUT's decision, so that NNI's ratio logic (per-layer
ratio, ``min``/``max_sparse_ratio``, global and dependency groups, bias alignment)
stays NNI's.

For one *unit* (a target, a global group or a dependency group) of pruning ratio r,
with task t's normalised block scores ``v_t = h_t / Σ h_t`` over the blocks t uses:

- verdict rules (``vote``, ``any``, ``all``): each task keeps its top fraction k of the
  unit's blocks it uses; a block is kept when ``#{t keeps it} ≥ n`` (``n = min(votes,
  #users)`` for ``vote``, 1 for ``any``, ``#users`` for ``all``). k is searched by
  bisection so that the kept blocks hold ``(1 − r)`` of the unit's elements, as
  ``cut_plugin.cut_masks`` calibrates. Kept blocks rank above all others, ties and
  the rest by the users' mean ``v_t``.
- score rules (``mean``, ``max``, ``weighted``): blocks rank by the fused ``v_t`` of
  their users (``cut_plugin.fusion.fuse_blocks``).

Implementation notes:
- The metric returned is the block's rank in the unit, scaled to ``(0, 1]``, so it is
  a strict order: NNI's global threshold then masks an exact count (ties of raw
  scores, e.g. dead units, are broken by position).
- Blocks that no selected task uses rank lowest.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping
from typing import Any

import torch
from torch import Tensor

from cut_plugin.fusion import fuse_blocks

__all__ = ["space_metrics", "unit_metrics"]


def unit_metrics(
    blocks: Mapping[str, Mapping[Hashable, Tensor]],
    shapes: Mapping[Hashable, tuple[torch.Size, int]],
    totals: Mapping[str, float],
    *,
    pruning_ratio: float,
    rule: str,
    votes: int,
    weights: Mapping[str, float] | None = None,
    calibrate: bool = True,
) -> dict[Hashable, Tensor]:
    """One unit's metric ``{key: Tensor(metric shape)}``: higher = kept longer.

    Args:
        blocks: ``{task: {key: raw block scores}}`` for the keys each task uses; a
            tensor holds one score per block, in the key's metric shape.
        shapes: ``{key: (metric shape, elements per block)}`` for every key of the unit.
        totals: each task's total raw score, the normaliser of ``v_t``.
        pruning_ratio: the fraction of the unit's elements NNI will mask.
        rule, votes, weights, calibrate: the fusion (``cut_plugin.CUTConfig``), computed
            by the one kernel :func:`cut_plugin.fusion.fuse_blocks`.
    """
    keys = list(shapes)
    sizes = [int(torch.Size(shapes[k][0]).numel()) for k in keys]
    grain = torch.cat(
        [
            torch.full((n,), float(shapes[k][1]), device="cpu")
            for k, n in zip(keys, sizes, strict=True)
        ]
    )
    tasks = [t for t in blocks if any(k in blocks[t] for k in keys)]
    num_blocks = grain.numel()
    if not tasks:
        score = torch.zeros(num_blocks, device="cpu")
    else:
        values = torch.zeros(len(tasks), num_blocks, device="cpu")
        used = torch.zeros(len(tasks), num_blocks, dtype=torch.bool, device="cpu")
        offsets = dict(zip(keys, itertools.accumulate([0, *sizes]), strict=False))
        for row, task in enumerate(tasks):
            total = float(totals.get(task, 0.0)) or 1.0
            for key, value in blocks[task].items():
                if key not in offsets:
                    continue
                start = int(offsets[key])
                flat = value.detach().reshape(-1).float().cpu()
                values[row, start : start + flat.numel()] = flat / total
                used[row, start : start + flat.numel()] = True
        kept, fused = fuse_blocks(
            values,
            used,
            rule=rule,
            votes=votes,
            keep=1.0 - pruning_ratio,
            calibrate=calibrate,
            weights=[float(weights[t]) for t in tasks] if rule == "weighted" and weights else None,
            grain=grain,
        )
        score = fused if kept is None else kept.float() * 2.0 + fused
    order = torch.argsort(score, stable=True)
    rank = torch.empty(num_blocks, device="cpu")
    rank[order] = torch.arange(1, num_blocks + 1, dtype=torch.float32, device="cpu") / num_blocks
    # Fused on the host; handed back on the device of the scores NNI gave (its weights').
    device = next((v.device for b in blocks.values() for v in b.values()), rank.device)
    return {
        key: piece.reshape(shapes[key][0]).to(device)
        for key, piece in zip(keys, rank.split(sizes), strict=True)
    }


def space_metrics(
    kind: str,
    spaces: Mapping[tuple[str, str], Any],
    data: Mapping[str, Mapping[str, Mapping[str, Tensor]]],
    totals: Mapping[str, float],
    config: Any,
) -> dict[tuple[str, str], Tensor]:
    """The metric of one unit of NNI target spaces (``kind``: target, global or dependency)."""
    members = list(spaces)
    blocks: dict[str, dict[Hashable, Tensor]] = {}
    shapes: dict[Hashable, tuple[torch.Size, int]] = {}
    for key, space in spaces.items():
        target = space.target
        if target is None:  # not active; _collect_data left it out
            continue
        scaler = space._scaler
        for task, value in data[key[0]][key[1]].items():
            block = (
                value if scaler is None else scaler.shrink(value, lambda t: t.sum(-1), keepdim=True)
            )
            blocks.setdefault(task, {})[key] = block
        shape = (
            target.shape if scaler is None else scaler.shrink(target.detach(), keepdim=True).shape
        )
        shapes[key] = (shape, target.numel() // max(torch.Size(shape).numel(), 1))
    first = spaces[members[0]]
    ratio = float(first.sparse_ratio or 0.0)
    if kind == "target":
        ratio = min(first.max_sparse_ratio or 1.0, max(first.min_sparse_ratio or 0.0, ratio))
    if kind != "dependency":
        result = unit_metrics(
            blocks,
            shapes,
            totals,
            pruning_ratio=ratio,
            rule=config.rule,
            votes=config.votes,
            weights=config.weights,
            calibrate=config.calibrate,
        )
        return {key: result[key] for key in members}
    metric_shapes = {shapes[key][0] for key in members}
    if len(metric_shapes) > 1:
        raise ValueError(
            f"dependency_group_id {first.dependency_group_id!r} groups layers whose channel metrics have "
            f"shapes {sorted(tuple(s) for s in metric_shapes)}; group layers of one type and width"
        )
    # One channel vector per task, summed over the group's layers, which share one mask.
    channels: dict[str, dict[Hashable, Tensor]] = {
        task: {"group": torch.stack([b.reshape(-1) for b in per_key.values()]).sum(0)}
        for task, per_key in blocks.items()
    }
    shape, _ = shapes[members[0]]
    group_shape: dict[Hashable, tuple[torch.Size, int]] = {
        "group": (shape, sum(shapes[key][1] for key in members))
    }
    group = unit_metrics(
        channels, group_shape, totals, pruning_ratio=ratio, rule=config.rule, votes=config.votes,
        weights=config.weights, calibrate=config.calibrate,
    )["group"]  # fmt: skip
    return {key: group.clone() for key in members}
