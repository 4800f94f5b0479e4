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

__all__ = [
    "RULES",
    "Rule",
    "check_rule",
    "combine",
    "fuse",
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


def combine(
    scores: Tensor,
    rule: str,
    weights: Mapping[str, float] | Sequence[float] | None,
    names: list[str],
) -> Tensor:
    """Fuse already-normalised ``scores`` ``(num_tasks, *shape)`` by a score rule (mean/max/weighted)."""
    if rule == "mean":
        return scores.mean(dim=0)
    if rule == "max":
        return scores.max(dim=0).values
    if rule == "weighted":
        w = _weights(weights, names, scores.device)
        return (w.reshape(-1, *([1] * (scores.dim() - 1))) * scores).sum(dim=0)
    raise ValueError(f"{rule!r} is not a score rule; choose from ['mean', 'max', 'weighted']")


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
    if stacked.dtype == torch.bool:
        verdicts = stacked
        scores = stacked.float()
    else:
        if not torch.isfinite(stacked).all():
            raise ValueError(
                "task_scores contain NaN or inf; score the tasks again on finite losses"
            )
        scores = normalise(stacked.float().flatten(1), dim=1).reshape(stacked.shape)
        verdicts = None
    if rule in VERDICT_RULES:
        if verdicts is None:
            if keep is None:
                raise ValueError(
                    f"rule {rule!r} fuses keep/prune verdicts: pass keep_ratio (each task keeps its top "
                    "fraction) or boolean masks"
                )
            verdicts = torch.stack([top_mask(s, keep) for s in scores])
        needed = {"any": 1, "all": len(names)}.get(rule, min(votes, len(names)))
        return verdicts.sum(dim=0) >= needed
    fused = combine(scores, rule, weights, names)
    return fused if keep is None else top_mask(fused, keep)


def rank_channels(
    channel_scores: Tensor,
    totals: Tensor,
    *,
    rule: Rule = "vote",
    votes: int = 2,
    keep_ratio: float = 0.5,
    weights: Sequence[float] | None = None,
) -> Tensor:
    """One importance per channel such that pruning the lowest follows the fusion rule.

    Args:
        channel_scores: ``(num_tasks, num_channels)`` raw scores of the tasks that use
            these channels.
        totals: ``(num_tasks,)`` each task's total score over its whole subnetwork,
            so that normalised scores ``v = h / total`` are comparable across layers.
        keep_ratio: the fraction of channels each task keeps (verdict rules).

    Returns:
        ``(num_channels,)``. For verdict rules, every channel the rule keeps ranks
        above every channel it does not (a bonus of 2 > any normalised score), and
        ties are broken by the tasks' mean normalised score.
    """
    rule, votes = check_rule(rule, votes)
    normalised = (
        channel_scores.float() / totals.float().clamp_min(torch.finfo(torch.float32).tiny)[:, None]
    )
    if rule in VERDICT_RULES:
        kept = fuse(normalised, rule=rule, votes=votes, keep_ratio=keep_ratio)
        return kept.float() * 2.0 + normalised.mean(dim=0)
    return combine(normalised, rule, weights, [str(i) for i in range(normalised.shape[0])])
