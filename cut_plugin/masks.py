"""Unstructured CUT masks, as the paper: per-task top weights fused on the shared ones.

Each task t ranks the conv/linear weights of its own subnetwork (backbone +
head t) by its normalised score ``v_t = |h_t| / Σ|h_t|`` and keeps its top
``γ = (1 − S)·m_t`` of them in one global ranking. Head weights take their own
task's verdict; a shared weight is kept when the fusion rule says so (``vote``:
at least ``min(votes, #users)`` of the tasks that use it keep it). Biases and
normalisation layers are not pruned.

Implementation notes:
- With ``vote``/``all`` the fused model keeps fewer weights than each task does,
  with ``any`` more, so the paper's literal rule misses the target sparsity S.
  By default (``calibrate=True``) the per-task keep fraction is searched by
  bisection so that the achieved sparsity over the selected tasks' prunable
  weights is S (within 1 %); ``calibrate=False`` gives the literal rule.
- Ties in a ranking are broken by position, so counts are exact.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from cut_plugin.fusion import VERDICT_RULES, Rule, check_rule, combine, top_mask
from cut_plugin.vocabulary import check_ratio

__all__ = ["PRUNABLE_TYPES", "apply_masks", "cut_masks", "mask_sparsity", "prunable_weights"]

log = logging.getLogger(__name__)

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{name: weight}`` of every conv/linear layer of ``model`` (each tied weight once)."""
    names = {id(p): name for name, p in model.named_parameters()}
    result: dict[str, nn.Parameter] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (
            isinstance(module, PRUNABLE_TYPES)
            and isinstance(weight, nn.Parameter)
            and id(weight) in names
        ):
            result[names[id(weight)]] = weight
    return result


def _check_task_scores(
    task_scores: Any, weights: Mapping[str, nn.Parameter]
) -> dict[str, dict[str, Tensor]]:
    if not isinstance(task_scores, Mapping) or not task_scores:
        raise TypeError(
            "task_scores must be a non-empty dict {task: {param_name: Tensor}} from score_tasks"
        )
    result: dict[str, dict[str, Tensor]] = {}
    for task, scores in task_scores.items():
        if not isinstance(scores, Mapping):
            raise TypeError(
                f"task_scores[{task!r}] must be a dict {{param_name: Tensor}}, got {type(scores).__name__}"
            )
        own = {}
        for name, value in scores.items():
            if name not in weights:
                continue
            if not isinstance(value, Tensor) or value.shape != weights[name].shape:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"task_scores[{task!r}][{name!r}] is {shape} but the weight is "
                    f"{tuple(weights[name].shape)}; score this model again with score_tasks"
                )
            if not torch.isfinite(value).all():
                raise ValueError(
                    f"task_scores[{task!r}][{name!r}] holds NaN or inf; score on finite losses"
                )
            own[name] = value.detach().float()
        result[str(task)] = own
    if not any(result.values()):
        raise ValueError(
            "no task's scores name a conv/linear weight of this model; score this model with score_tasks"
        )
    return result


def cut_masks(
    model: nn.Module,
    task_scores: Mapping[str, Mapping[str, Tensor]],
    *,
    pruning_ratio: float,
    rule: Rule = "vote",
    votes: int = 2,
    calibrate: bool = True,
    weights: Mapping[str, float] | None = None,
) -> dict[str, Tensor]:
    """Return unstructured keep-masks ``{weight_name: bool Tensor}`` for the selected tasks.

    Args:
        model: the model (or its ``select_tasks`` copy) whose weights were scored.
        task_scores: ``{task: {param_name: Tensor}}`` from ``score_tasks``.
        pruning_ratio: the fraction S of the tasks' conv/linear weights removed.
        rule, votes: the fusion of the tasks' verdicts on shared weights (``fuse``).
        calibrate: search each task's keep fraction so the achieved sparsity is S.
        weights: ``{task: weight}`` for ``rule="weighted"``.

    Only weights some selected task uses get a mask; :func:`mask_sparsity` gives
    the achieved sparsity (also logged at INFO level).
    """
    ratio = check_ratio(pruning_ratio)
    rule, votes = check_rule(rule, votes)
    prunable = prunable_weights(model)
    scores = _check_task_scores(task_scores, prunable)
    used = [name for name in prunable if any(name in s for s in scores.values())]
    users = {name: [t for t, s in scores.items() if name in s] for name in used}
    if rule in VERDICT_RULES:
        masks = _verdict_masks(scores, used, users, ratio, rule, votes, calibrate)
    else:
        masks = _score_masks(scores, used, users, ratio, rule, weights)
    log.info("cut_masks: asked sparsity %.4f, achieved %.4f", ratio, mask_sparsity(masks))
    return masks


def _score_masks(
    scores: dict[str, dict[str, Tensor]],
    used: list[str],
    users: dict[str, list[str]],
    ratio: float,
    rule: str,
    weights: Mapping[str, float] | None,
) -> dict[str, Tensor]:
    totals = {t: sum(float(v.sum()) for v in s.values()) or 1.0 for t, s in scores.items()}
    fused = {}
    for name in used:
        stacked = torch.stack([scores[t][name] / totals[t] for t in users[name]])
        fused[name] = combine(stacked, rule, weights, users[name])
    sizes = [fused[n].numel() for n in used]
    keep = top_mask(torch.cat([fused[n].reshape(-1) for n in used]), 1.0 - ratio)
    return {n: m.reshape(fused[n].shape) for n, m in zip(used, keep.split(sizes), strict=True)}


def _verdict_masks(
    scores: dict[str, dict[str, Tensor]],
    used: list[str],
    users: dict[str, list[str]],
    ratio: float,
    rule: str,
    votes: int,
    calibrate: bool,
) -> dict[str, Tensor]:
    # Each task's global rank of every weight of its subnetwork, computed once.
    ranks: dict[str, dict[str, Tensor]] = {}
    sizes: dict[str, int] = {}
    for task, own in scores.items():
        names = [n for n in used if n in own]
        flat = torch.cat([own[n].reshape(-1) for n in names]) if names else torch.zeros(0)
        order = torch.argsort(flat, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel())
        pieces = rank.split([own[n].numel() for n in names])
        ranks[task] = {n: r.reshape(own[n].shape) for n, r in zip(names, pieces, strict=True)}
        sizes[task] = flat.numel()
    total = sum(scores[users[n][0]][n].numel() for n in used)

    def masks_for(keep: float) -> dict[str, Tensor]:
        counts = {t: round(keep * sizes[t]) for t in scores}
        result = {}
        for name in used:
            verdicts = torch.stack([ranks[t][name] < counts[t] for t in users[name]])
            needed = {"any": 1, "all": len(users[name])}.get(rule, min(votes, len(users[name])))
            result[name] = verdicts.sum(dim=0) >= needed
        return result

    def kept_fraction(masks: dict[str, Tensor]) -> float:
        return sum(int(m.sum()) for m in masks.values()) / max(total, 1)

    target = 1.0 - ratio
    best = masks_for(target)
    best_error = abs(kept_fraction(best) - target)
    low, high = 0.0, 1.0
    for _ in range(40 if calibrate else 0):
        if best_error <= 1e-3:
            break
        keep = (low + high) / 2
        masks = masks_for(keep)
        kept = kept_fraction(masks)
        if abs(kept - target) < best_error:
            best, best_error = masks, abs(kept - target)
        low, high = (keep, high) if kept < target else (low, keep)
    return best


def mask_sparsity(masks: Mapping[str, Tensor]) -> float:
    """Fraction of masked-out elements over all masks (0 when there are none)."""
    total = sum(m.numel() for m in masks.values())
    return 0.0 if total == 0 else 1.0 - sum(int(m.sum()) for m in masks.values()) / total


def check_masks(model: nn.Module, masks: Any) -> dict[str, Tensor]:
    """Return ``masks`` as bool tensors broadcastable to their parameters, or raise naming the bad one."""
    if not isinstance(masks, Mapping):
        raise TypeError(
            f"masks must be a dict {{param_name: bool Tensor}}, got {type(masks).__name__}"
        )
    params = dict(model.named_parameters())
    result = {}
    for name, mask in masks.items():
        if name not in params:
            close = [p for p in params if p.endswith(str(name).split(".")[-1])][:5]
            raise ValueError(
                f"masks names {name!r}, which is not a parameter of the model; e.g. {close}"
            )
        if not isinstance(mask, Tensor):
            raise TypeError(f"masks[{name!r}] must be a Tensor, got {type(mask).__name__}")
        shape = params[name].shape
        try:
            torch.broadcast_shapes(mask.shape, shape)
        except RuntimeError:
            raise ValueError(
                f"masks[{name!r}] has shape {tuple(mask.shape)}, which does not broadcast to the "
                f"parameter's {tuple(shape)}"
            ) from None
        if torch.broadcast_shapes(mask.shape, shape) != shape:
            raise ValueError(
                f"masks[{name!r}] has shape {tuple(mask.shape)}, larger than the parameter's {tuple(shape)}"
            )
        result[str(name)] = mask.to(device=params[name].device).bool()
    return result


def apply_masks(
    model: nn.Module, masks: Mapping[str, Tensor], *, inplace: bool = False
) -> nn.Module:
    """Return a copy of ``model`` (``model`` itself with ``inplace=True``) with masked elements zeroed.

    ``masks``: ``{param_name: bool Tensor}``, True = keep, each broadcastable to its parameter
    (element masks, or channel masks such as ``(C_out, 1, 1, 1)``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    checked = check_masks(model, masks)
    target = model if inplace else copy.deepcopy(model)
    params = dict(target.named_parameters())
    with torch.no_grad():
        for name, mask in checked.items():
            params[name].mul_(mask.to(params[name].dtype))
    return target
