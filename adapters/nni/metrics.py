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
  their users (``cut_plugin.fusion.combine``).

Implementation notes:
- The metric returned is the block's rank in the unit, scaled to ``(0, 1]``, so it is
  a strict order: NNI's global threshold then masks an exact count (ties of raw
  scores, e.g. dead units, are broken by position).
- Blocks that no selected task uses rank lowest.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from torch import Tensor

from cut_plugin.fusion import VERDICT_RULES, combine

__all__ = ["unit_metrics"]


def _verdicts(
    values: Tensor, used: Tensor, grain: Tensor, keep_target: float, rule: str, votes: int
) -> Tensor:
    """Kept blocks ``(num_blocks,)`` with each task keeping its top fraction, calibrated.

    ``values``/``used``: ``(num_tasks, num_blocks)``; ``grain``: elements per block.
    """
    users = used.sum(dim=0)
    needed = {"any": torch.ones_like(users), "all": users}.get(rule, users.clamp(max=votes))
    # Each task's rank of every block it uses (0 = most important).
    ranks = torch.full_like(values, float("inf"))
    counts = used.sum(dim=1)
    for t in range(values.shape[0]):
        index = used[t].nonzero().flatten()
        order = torch.argsort(values[t, index], descending=True, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel())
        ranks[t, index] = rank.to(values.dtype)
    total = float(grain.sum())

    def kept_for(keep: float) -> Tensor:
        limit = torch.round(keep * counts.to(values.dtype))[:, None]
        return ((ranks < limit).sum(dim=0) >= needed) & (users > 0)

    def error(kept: Tensor) -> float:
        return abs(float(grain[kept].sum()) / max(total, 1.0) - keep_target)

    best = kept_for(keep_target)
    best_error = error(best)
    low, high = 0.0, 1.0
    for _ in range(40):
        if best_error <= 1e-3:
            break
        keep = (low + high) / 2
        kept = kept_for(keep)
        if error(kept) < best_error:
            best, best_error = kept, error(kept)
        fraction = float(grain[kept].sum()) / max(total, 1.0)
        low, high = (keep, high) if fraction < keep_target else (low, keep)
    return best


def unit_metrics(
    blocks: Mapping[str, Mapping[Hashable, Tensor]],
    shapes: Mapping[Hashable, tuple[torch.Size, int]],
    totals: Mapping[str, float],
    *,
    pruning_ratio: float,
    rule: str,
    votes: int,
    weights: Mapping[str, float] | None = None,
) -> dict[Hashable, Tensor]:
    """One unit's metric ``{key: Tensor(metric shape)}``: higher = kept longer.

    Args:
        blocks: ``{task: {key: raw block scores}}`` for the keys each task uses; a
            tensor holds one score per block, in the key's metric shape.
        shapes: ``{key: (metric shape, elements per block)}`` for every key of the unit.
        totals: each task's total raw score, the normaliser of ``v_t``.
        pruning_ratio: the fraction of the unit's elements NNI will mask.
        rule, votes, weights: the fusion (``cut_plugin.fuse``'s rules).
    """
    keys = list(shapes)
    sizes = [int(torch.Size(shapes[k][0]).numel()) for k in keys]
    grain = torch.cat(
        [torch.full((n,), float(shapes[k][1])) for k, n in zip(keys, sizes, strict=True)]
    )
    tasks = [t for t in blocks if any(k in blocks[t] for k in keys)]
    num_blocks = grain.numel()
    if not tasks:
        score = torch.zeros(num_blocks)
    else:
        values = torch.zeros(len(tasks), num_blocks)
        used = torch.zeros(len(tasks), num_blocks, dtype=torch.bool)
        offsets = dict(zip(keys, torch.tensor([0, *sizes]).cumsum(0).tolist(), strict=False))
        for row, task in enumerate(tasks):
            total = float(totals.get(task, 0.0)) or 1.0
            for key, value in blocks[task].items():
                if key not in offsets:
                    continue
                start = int(offsets[key])
                flat = value.detach().reshape(-1).float().cpu()
                values[row, start : start + flat.numel()] = flat / total
                used[row, start : start + flat.numel()] = True
        users = used.sum(dim=0)
        mean = (values * used).sum(dim=0) / users.clamp(min=1)
        if rule in VERDICT_RULES:
            kept = _verdicts(values, used, grain, 1.0 - pruning_ratio, rule, votes)
            score = kept.float() * 2.0 + mean
        else:
            score = _fused_scores(values, used, rule, weights, tasks)
    order = torch.argsort(score, stable=True)
    rank = torch.empty(num_blocks)
    rank[order] = torch.arange(1, num_blocks + 1, dtype=torch.float32) / num_blocks
    return {
        key: piece.reshape(shapes[key][0])
        for key, piece in zip(keys, rank.split(sizes), strict=True)
    }


def _fused_scores(
    values: Tensor,
    used: Tensor,
    rule: str,
    weights: Mapping[str, float] | None,
    tasks: Sequence[str],
) -> Tensor:
    """Score rules over each block's users only (blocks with no user score -1)."""
    score = torch.full((values.shape[1],), -1.0)
    patterns = torch.unique(used, dim=1)
    for p in range(patterns.shape[1]):
        pattern = patterns[:, p]
        if not pattern.any():
            continue
        columns = (used == pattern[:, None]).all(dim=0)
        rows = pattern.nonzero().flatten().tolist()
        names = [tasks[r] for r in rows]
        score[columns] = combine(values[rows][:, columns], rule, weights, names)
    return score
