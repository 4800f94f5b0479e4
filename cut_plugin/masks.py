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
- The calibration (``cut_plugin.verdicts.search_verdict``, behind
  ``cut_plugin.fusion.fuse_blocks``) sorts nothing on CPU: each task's rank
  ``round(f·count)`` is placed by a lazy quickselect over int64 keys, and one vote
  count follows the fractions the bisection visits, touching only the weights whose
  task verdicts change. The masks are those of re-ranking every weight at every step
  (``tests/test_masks_speed.py``, ``tests/test_masks_calibration.py``).
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cut_plugin.config import CUTConfig, resolve_config
from cut_plugin.fusion import fuse_blocks, top_mask
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
            own[name] = value.detach().float()
        result[str(task)] = own
    modules = {name.removesuffix(".weight") for name in weights}
    if not any(result.values()) and any(n in modules for s in task_scores.values() for n in s):
        raise ValueError(
            "task_scores are channel scores keyed by module name (score_channels, criterion="
            "'activation'), but cut_masks masks single weights and needs element scores: score "
            "with score_tasks (criterion 'taylor', 'magnitude' or 'fisher'), or prune channels "
            "with cut_prune(..., granularity='channel', criterion='activation')"
        )
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
    config: CUTConfig | Mapping[str, Any] | None = None,
    **options: Any,
) -> dict[str, Tensor]:
    """Return unstructured keep-masks ``{weight_name: bool Tensor}`` for the selected tasks.

    Args:
        model: the model (or its ``select_tasks`` copy) whose weights were scored.
        task_scores: ``{task: {param_name: Tensor}}`` from ``score_tasks``.
        pruning_ratio: the fraction S of the tasks' conv/linear weights removed.
        config: a :class:`CUTConfig` (``rule``, ``votes``, ``weights``, ``calibrate``;
            ``criterion`` is not used here), or the same options as keywords.

    Only weights some selected task uses get a mask; :func:`mask_sparsity` gives
    the achieved sparsity (also logged at INFO level).
    """
    ratio = check_ratio(pruning_ratio)
    prunable = prunable_weights(model)
    scores = _check_task_scores(task_scores, prunable)
    tasks = list(scores)
    cut = resolve_config(config, options, tasks=tasks)
    used = [name for name in prunable if any(name in s for s in scores.values())]
    sizes = [prunable[n].numel() for n in used]
    # One row per task over every used weight element: v_t = h_t / Σ h_t on its own weights
    # (torch's per-tensor sums added in order). Rows are filled with numpy: one copy and
    # one division each, no parallel region per tensor.
    values = torch.empty(len(tasks), sum(sizes), device="cpu")
    uses = torch.zeros(len(tasks), sum(sizes), dtype=torch.bool, device="cpu")
    rows, flags = values.numpy(), uses.numpy()
    offsets = [0, *itertools.accumulate(sizes)]
    zeros = np.zeros(max(sizes), dtype=np.float32)
    for row, task in enumerate(tasks):
        own = scores[task]
        pieces = [
            own[n].reshape(-1).cpu().numpy() if n in own else zeros[:k]
            for n, k in zip(used, sizes, strict=True)
        ]
        np.concatenate(pieces, out=rows[row])
        sums = [float(v.sum()) for v in own.values()]
        for name, total in zip(own, sums, strict=True):
            # A finite sum of float32 scores needs finite scores (check those that overflow).
            if not math.isfinite(total) and not torch.isfinite(own[name]).all():
                raise ValueError(
                    f"task_scores[{task!r}][{name!r}] holds NaN or inf; score on finite losses"
                )
        # As torch's float32 tensor / Python float: a division by the float's float32.
        with np.errstate(over="ignore"):
            divisor = np.float64(sum(sums) or 1.0).astype(np.float32)
        np.divide(rows[row], divisor, out=rows[row])
        for i, name in enumerate(used):
            if name in own:
                flags[row, offsets[i] : offsets[i + 1]] = True
    kept, fused = fuse_blocks(
        values,
        uses,
        rule=cut.rule,
        votes=cut.votes,
        keep=1.0 - ratio,
        calibrate=cut.calibrate,
        weights=cut.task_weights(tasks),
    )
    if kept is None:
        kept = top_mask(fused, 1.0 - ratio)
    masks = {  # each on its parameter's device (the kernel runs on the host)
        n: m.reshape(prunable[n].shape).to(prunable[n].device)
        for n, m in zip(used, kept.split(sizes), strict=True)
    }
    if log.isEnabledFor(logging.INFO):
        achieved = 1.0 - int(kept.count_nonzero()) / max(kept.numel(), 1)
        log.info("cut_masks: asked sparsity %.4f, achieved %.4f", ratio, achieved)
    return masks


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
    for name, mask in masks.items() if isinstance(masks, Mapping) else ():
        if isinstance(mask, Tensor) and mask.dtype != torch.bool:
            raise TypeError(
                f"masks[{name!r}] is a {mask.dtype} Tensor; masks must be bool (True = keep). "
                "Scores become masks through cut_masks(...) or fuse(..., keep_ratio=...); "
                "for 0/1 masks pass mask.bool()"
            )
    checked = check_masks(model, masks)
    target = model if inplace else copy.deepcopy(model)
    params = dict(target.named_parameters())
    with torch.no_grad():
        for name, mask in checked.items():
            params[name].mul_(mask.to(params[name].dtype))
    return target
