"""Fusion of the tasks' verdicts on shared parameters (CUT step 3).

Each task first normalises its scores, ``v_t = h_t / Σ h_t``, so that tasks with
larger losses do not dominate. Then, for T tasks that share a parameter:

- verdict rules — each task keeps its top ``keep_ratio`` elements (or gives a
  boolean verdict directly), and an element is kept when
  ``#{t : t keeps it} ≥ n`` with ``n = min(votes, T)`` for ``vote`` (CUT),
  ``n = 1`` for ``any`` (DiSparse) and ``n = T`` for ``all``;
- score rules — ``mean`` (``Σ_t v_t / T``), ``max`` (``max_t v_t``) and
  ``weighted`` (``Σ_t w_t v_t``) give a fused score; with ``keep_ratio`` its
  top elements are kept.

Implementation notes: CUT's released code uses a fixed threshold of 2 votes,
which with a single selected task keeps nothing of the backbone; here ``votes``
is clipped to the number of tasks that use the parameter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast, get_args

import torch
from torch import Tensor

from cut_plugin.verdicts import needed_votes, search_verdict

__all__ = [
    "RULES",
    "Rule",
    "check_keep_ratio",
    "check_rule",
    "fuse",
    "fuse_blocks",
    "group_normalise",
    "normalise",
    "rank_channels",
    "top_mask",
]

Rule = Literal["vote", "any", "all", "mean", "max", "weighted"]
RULES: tuple[str, ...] = get_args(Rule)
VERDICT_RULES = ("vote", "any", "all")


def check_rule(rule: Any, votes: Any = 2) -> tuple[Rule, int]:
    """Validate a fusion rule and its vote threshold; return them."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {list(RULES)}, got {rule!r}")
    if isinstance(votes, bool) or not isinstance(votes, int) or votes < 1:
        raise ValueError(
            f"votes must be an int >= 1 (how many tasks must keep a shared weight), got {votes!r}"
        )
    return cast(Rule, rule), votes


def check_keep_ratio(keep_ratio: Any, *, allow_zero: bool = False) -> float:
    """A keep fraction in ``(0, 1]`` (``[0, 1]`` with ``allow_zero``), or a clear error."""
    if (
        isinstance(keep_ratio, bool)
        or not isinstance(keep_ratio, int | float)
        or math.isnan(keep_ratio)
        or not 0 <= keep_ratio <= 1
        or (keep_ratio == 0 and not allow_zero)
    ):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(
            f"keep_ratio must be in {interval} (the fraction of a group's channels each task "
            f"keeps), got {keep_ratio!r}"
        )
    return float(keep_ratio)


def _check_keep_ratio(keep_ratio: Any) -> float | None:
    if keep_ratio is None:
        return None
    if (
        isinstance(keep_ratio, bool)
        or not isinstance(keep_ratio, int | float)
        or math.isnan(keep_ratio)
    ):
        raise TypeError(f"keep_ratio must be a float in [0, 1] or None, got {keep_ratio!r}")
    if not 0.0 <= keep_ratio <= 1.0:
        raise ValueError(
            f"keep_ratio must be in [0, 1] (the fraction each task keeps), got {keep_ratio}"
        )
    return float(keep_ratio)


def normalise(scores: Tensor, dim: int | None = None) -> Tensor:
    """``scores / scores.sum()`` (over ``dim`` when given); all-zero scores stay zero."""
    if dim is None:
        total = scores.sum()
        return scores / total if total > 0 else scores.clone()
    total = scores.sum(dim=dim, keepdim=True)
    return scores / torch.where(total > 0, total, torch.ones_like(total))


def top_mask(scores: Tensor, keep_ratio: float) -> Tensor:
    """Boolean mask of the ``round(keep_ratio * numel)`` largest elements (exact count, ties by index)."""
    flat = scores.reshape(-1)
    k = min(flat.numel(), max(0, round(keep_ratio * flat.numel())))
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        mask[torch.topk(flat.float(), k, sorted=False).indices] = True
    return mask.reshape(scores.shape)


def _stack(
    task_scores: Mapping[str, Tensor] | Sequence[Tensor] | Tensor,
) -> tuple[list[str], Tensor]:
    if isinstance(task_scores, Tensor):
        if task_scores.dim() < 1 or task_scores.shape[0] == 0:
            raise ValueError(
                "task_scores as a Tensor must be shaped (num_tasks, ...) with num_tasks >= 1"
            )
        return [str(i) for i in range(task_scores.shape[0])], task_scores
    if isinstance(task_scores, Mapping):
        names, values = [str(k) for k in task_scores], list(task_scores.values())
    elif isinstance(task_scores, Sequence):
        names, values = [str(i) for i in range(len(task_scores))], list(task_scores)
    else:
        raise TypeError(
            f"task_scores must be a dict {{task: Tensor}}, got {type(task_scores).__name__}"
        )
    if not values:
        raise ValueError("task_scores is empty: fuse needs at least one task's scores")
    for name, value in zip(names, values, strict=True):
        if not isinstance(value, Tensor):
            raise TypeError(f"task_scores[{name!r}] must be a Tensor, got {type(value).__name__}")
        if value.dim() == 0:
            raise ValueError(
                f"task_scores[{name!r}] is 0-dim; fuse scores of a parameter's elements"
            )
        if value.shape != values[0].shape:
            raise ValueError(
                f"task_scores[{name!r}] has shape {tuple(value.shape)} but task_scores[{names[0]!r}] has "
                f"{tuple(values[0].shape)}; fuse scores of the same parameter"
            )
    if len({v.dtype == torch.bool for v in values}) > 1:
        raise TypeError("task_scores mixes boolean verdicts and float scores; give all of one kind")
    return names, torch.stack(values)


def _weights(weights: Any, names: list[str], device: torch.device) -> Tensor:
    if weights is None:
        raise ValueError("rule 'weighted' needs weights={task: weight}")
    if isinstance(weights, Mapping):
        missing = [n for n in names if n not in weights]
        if missing:
            raise ValueError(f"weights has no entry for task(s) {missing}")
        values = [weights[n] for n in names]
    else:
        values = list(weights)
        if len(values) != len(names):
            raise ValueError(f"weights has {len(values)} entries for {len(names)} tasks")
    w = torch.tensor([float(v) for v in values], device=device)
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights must be finite and >= 0, got {values}")
    return w


def fuse_blocks(
    values: Tensor,
    used: Tensor | None = None,
    *,
    rule: str = "vote",
    votes: int = 2,
    keep: float | None = None,
    calibrate: bool = False,
    weights: Sequence[float] | None = None,
    grain: Tensor | None = None,
) -> tuple[Tensor | None, Tensor]:
    """The one fusion kernel: every CUT route (elements, channels, NNI blocks) calls it.

    Args:
        values: ``(num_tasks, num_blocks)`` normalised scores ``v_t`` (a block is an
            element, a channel or an NNI metric block).
        used: ``(num_tasks, num_blocks)`` bool, which tasks use each block (default all).
        rule, votes: the fusion (see the module docstring).
        keep: verdict rules: the fraction each task keeps of the blocks it uses, or with
            ``calibrate`` the fraction of elements the fused verdict must keep.
        calibrate: search the per-task keep fraction by bisection so that the kept
            blocks hold ``keep`` of all elements (within 0.1 %, or as close as the
            counts allow).
        weights: ``(num_tasks,)`` for ``weighted``, in row order.
        grain: ``(num_blocks,)`` elements per block (default 1), for ``calibrate``.

    Returns:
        ``(kept, score)``: ``kept`` ``(num_blocks,)`` bool for verdict rules (None for
        score rules); ``score`` the fused score over each block's users (``mean``,
        ``max``, ``weighted``; for verdict rules the users' mean). Blocks no task
        uses are never kept and score -1.
    """
    rule, votes = check_rule(rule, votes)
    if used is None:
        used = torch.ones(values.shape, dtype=torch.bool, device=values.device)
    # A bool sum into int64 is slow on CPU; a narrower count is exact.
    users = used.sum(dim=0, dtype=torch.int8 if values.shape[0] < 128 else torch.int32)
    masked = torch.where(used, values, 0.0)
    if rule in VERDICT_RULES or rule == "mean":
        score = masked.sum(dim=0) / users.clamp(min=1)
    elif rule == "max":
        score = torch.where(used, values, torch.full_like(values, -math.inf)).max(dim=0).values
    else:
        if weights is None or len(weights) != values.shape[0]:
            raise ValueError("rule 'weighted' needs one weight per task row")
        w = torch.tensor([float(v) for v in weights], device=values.device, dtype=values.dtype)
        score = (w[:, None] * masked).sum(dim=0)
    score = torch.where(users > 0, score, -1.0)
    if rule not in VERDICT_RULES:
        return None, score
    if keep is None:
        raise ValueError(f"rule {rule!r} needs the fraction each task keeps (keep_ratio)")
    needed = needed_votes(users, rule, votes)
    kept = search_verdict(
        values.detach(), used, needed, users, keep=keep, calibrate=calibrate, grain=grain
    )
    return kept, score


def fuse(
    task_scores: Mapping[str, Tensor] | Sequence[Tensor] | Tensor,
    *,
    rule: Rule = "vote",
    votes: int = 2,
    keep_ratio: float | None = None,
    weights: Mapping[str, float] | Sequence[float] | None = None,
) -> Tensor:
    """Fuse several tasks' scores (or boolean verdicts) on the same parameter.

    Args:
        task_scores: ``{task: Tensor(shape)}`` (or a ``(num_tasks, *shape)`` Tensor).
            Boolean tensors are keep-verdicts (True = keep); float tensors are
            importance scores, normalised per task first.
        rule: ``vote`` (CUT), ``any`` (DiSparse), ``all``, ``mean``, ``max``, ``weighted``.
        votes: for ``vote``, how many of the tasks must keep an element (clipped
            to the number of tasks).
        keep_ratio: the fraction of elements each task keeps (verdict rules on
            scores), or that the fused score keeps (score rules).
        weights: ``{task: weight}`` for ``weighted``.

    Returns:
        A boolean keep-mask of ``shape`` for verdict rules or when ``keep_ratio``
        is given; otherwise the fused float score of ``shape``.
    """
    rule, votes = check_rule(rule, votes)
    keep = _check_keep_ratio(keep_ratio)
    names, stacked = _stack(task_scores)
    shape = stacked.shape[1:]
    if stacked.dtype == torch.bool:
        if rule in VERDICT_RULES:
            users = torch.full(shape, len(names), device=stacked.device)
            return stacked.sum(dim=0) >= needed_votes(users, rule, votes)
        scores = stacked.float()
    else:
        if not torch.isfinite(stacked).all():
            raise ValueError(
                "task_scores contain NaN or inf; score the tasks again on finite losses"
            )
        scores = normalise(stacked.float().flatten(1), dim=1).reshape(stacked.shape)
    if rule in VERDICT_RULES and keep is None:
        raise ValueError(
            f"rule {rule!r} fuses keep/prune verdicts: pass keep_ratio (each task keeps its top "
            "fraction) or boolean masks"
        )
    task_weights = _weights(weights, names, scores.device).tolist() if rule == "weighted" else None
    kept, fused = fuse_blocks(
        scores.flatten(1), rule=rule, votes=votes, keep=keep, weights=task_weights
    )
    if kept is not None:
        return kept.reshape(shape)
    fused = fused.reshape(shape)
    return fused if keep is None else top_mask(fused, keep)


def group_normalise(scores: Tensor) -> Tensor:
    """``s / mean(s)`` squashed to ``[0, 1)`` by ``x / (1 + x)``: comparable across groups.

    Torch-Pruning's global pruning ranks every group's channel scores together. Raw
    normalised scores are not comparable there (a wide layer spreads a task's score
    over more channels), so each group's scores are divided by their mean, as
    Torch-Pruning's own importances do (``normalizer="mean"``); the monotone squash
    keeps them below the verdict bonus of :func:`rank_channels`.
    """
    mean = scores.mean()
    relative = scores / mean if mean > 0 else torch.zeros_like(scores)
    return relative / (1.0 + relative)


def rank_channels(
    channel_scores: Tensor,
    totals: Tensor,
    *,
    rule: Rule = "vote",
    votes: int = 2,
    keep_ratio: float = 0.5,
    weights: Sequence[float] | None = None,
    calibrate: bool = False,
) -> Tensor:
    """One importance per channel such that pruning the lowest follows the fusion rule.

    Args:
        channel_scores: ``(num_tasks, num_channels)`` raw scores of the tasks that use
            these channels.
        totals: ``(num_tasks,)`` each task's total score over its whole subnetwork,
            so that normalised scores ``v = h / total`` are comparable across layers.
        keep_ratio: the fraction of channels each task keeps (verdict rules), or with
            ``calibrate`` the fraction the fused verdict keeps.
        weights: one per task row, for ``weighted``.

    Returns:
        ``(num_channels,)`` in ``[0, 3)``. The fused score (the users' mean for
        verdict rules) goes through :func:`group_normalise`, so that scores of
        different groups compare under global pruning; for verdict rules every
        channel the rule keeps ranks above every channel it does not (a bonus of 2).
    """
    rule, votes = check_rule(rule, votes)
    normalised = (
        channel_scores.float() / totals.float().clamp_min(torch.finfo(torch.float32).tiny)[:, None]
    )
    kept, fused = fuse_blocks(
        normalised,
        rule=rule,
        votes=votes,
        keep=keep_ratio if rule in VERDICT_RULES else None,
        calibrate=calibrate,
        weights=weights,
    )
    ranked = group_normalise(fused)
    if kept is None:
        return ranked
    if not kept.any():
        # A verdict that keeps nothing would make Torch-Pruning skip the group under
        # global pruning (it never empties a layer): its best channel stays.
        kept = kept.clone()
        kept[int(torch.argmax(fused))] = True
    return kept.float() * 2.0 + ranked
