"""The PAM benchmark's pruning loop: prune step by step, keep what validation allows.

See :mod:`benchmarks.pam_suite` for the protocol; the steps are built through
``adapters.registry`` (Torch-Pruning's importances, or the released PAM gate pruner).
"""

from __future__ import annotations

import itertools
from typing import Any

from torch import Tensor

from adapters.registry import build
from benchmarks.data import batches
from benchmarks.pam_context import PAMContext
from pam_plugin import MergedNetwork, delete_groups, network_cost

__all__ = ["prune_until"]


def _step(
    ctx: PAMContext,
    current: MergedNetwork,
    pruner: str,
    example: Tensor,
    gradients: dict[str, Any],
    step: int,
) -> MergedNetwork:
    """One pruning step of ``current`` (a pruned copy)."""
    config = ctx.config
    if pruner == "gates":  # the released pruner: train gate_batches while scoring, one threshold
        data = list(itertools.islice(ctx.stream(current.tasks, ctx.seed * 977 + step),
                                     config.gate_batches))  # fmt: skip
        return build(
            {"prune": "merged-gates", "framework": "torch_pruning"},
            model=current, example_inputs=example, data=data,
            losses={t: ctx.losses[t] for t in current.tasks}, pruning_ratio=config.step_ratio,
            pruned_groups=config.pruned_groups, lr=config.gate_lr,
        )  # fmt: skip
    return build(
        {"prune": "merged", "framework": "torch_pruning", "criterion": pruner},
        model=current, example_inputs=example, pruning_ratio=config.step_ratio,
        pruned_groups=config.pruned_groups, **gradients,
    )  # fmt: skip


def prune_until(
    ctx: PAMContext, model: MergedNetwork, pruner: str
) -> tuple[MergedNetwork, dict[str, Any]]:
    """Prune step by step; the last (cheapest) model within tolerance on validation.

    ``schedule="tolerance"`` stops after ``patience`` misses in a row (none
    when the unpruned model misses); ``"fixed"`` runs every one of
    ``max_pruning_steps`` (the released code's fixed schedule) and keeps the
    cheapest step that met the tolerance, the unpruned model when none did.
    Either stops early once a step removes less than ``min_step_reduction``.
    """
    config, tasks = ctx.config, model.tasks
    example = ctx.merge_inputs[:2]
    gradients: dict[str, Any] = {}
    if pruner == "taylor":
        grad_batches = batches(ctx.train_split(tasks), config.batch_size, seed=ctx.seed + 3)
        gradients = {
            "data": list(itertools.islice(grad_batches, config.importance_batches)),
            "losses": {t: ctx.losses[t] for t in tasks},
        }
    accuracy = ctx.accuracy(model, ctx.validation)
    macs = network_cost(model, example[:1]).macs
    history = [{"step": 0, "macs": macs, "validation_accuracy": accuracy}]
    kept, kept_accuracy, steps, current, last_macs = model, accuracy, 0, model, macs
    fixed = config.schedule == "fixed"
    misses = 0 if fixed or ctx.meets(accuracy) else config.patience
    while (fixed or misses < config.patience) and len(history) <= config.max_pruning_steps:
        step = len(history)
        candidate = _step(ctx, current, pruner, example, gradients, step)
        candidate_macs = network_cost(candidate, example[:1]).macs
        if candidate_macs > (1.0 - config.min_step_reduction) * last_macs:  # layers near 1 channel
            break
        last_macs = candidate_macs
        ctx.retrain(candidate, config.finetune_steps, seed=ctx.seed * 131 + step)
        accuracy = ctx.accuracy(candidate, ctx.validation)
        history.append({"step": step, "macs": candidate_macs, "validation_accuracy": accuracy})
        current, misses = candidate, misses + 1
        if ctx.meets(accuracy):
            kept, kept_accuracy, steps, macs, misses = candidate, accuracy, step, candidate_macs, 0
    deleted: list[dict[str, Any]] = []
    if config.delete_groups and ctx.meets(kept_accuracy):
        kept, deleted = delete_groups(
            kept, example, accept=lambda m: ctx.meets(ctx.accuracy(m, ctx.validation))
        )
        if deleted:
            kept_accuracy = ctx.accuracy(kept, ctx.validation)
            macs = network_cost(kept, example[:1]).macs
    return kept, {
        "deleted_groups": deleted,
        "steps": steps,
        "meets_tolerance": ctx.meets(kept_accuracy),
        "validation_accuracy": kept_accuracy,
        "test_accuracy": ctx.accuracy(kept, ctx.data.test),
        "macs": macs,
        "group_sizes": kept.group_sizes(),
        "history": history,
    }
