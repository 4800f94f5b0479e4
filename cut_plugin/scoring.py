"""Per-task parameter importance on the pre-trained weights (CUT step 2).

CUT attaches an all-ones mask β to every weight and scores it by the
sensitivity of task k's own loss, ``h = ∂L_k(W ⊙ β)/∂β = W ⊙ ∂L_k/∂W``, summed in
absolute value over mini-batches: SNIP's connection sensitivity, but on the
pre-trained weights, which is how CUT keeps the pre-trained knowledge.

Criteria (per element of every parameter a task uses):

- ``taylor`` (CUT): ``Σ_b |w ⊙ ∂L_t^b/∂w|``
- ``magnitude``: ``|w|`` (data only tells which parameters the task uses)
- ``fisher``: ``½ w² Σ_b (∂L_t^b/∂w)²`` — the loss increase of removing ``w`` under
  the empirical-Fisher diagonal (Theis et al. 2018)

``activation`` (opt-in, structured path only) scores output channels from
activation gradients instead (:mod:`cut_plugin.channel_scoring`); ``score_tasks``
rejects it with the fix.

Implementation notes:
- One forward per batch and one backward per selected task, through
  ``torch.autograd.grad``, so ``.grad`` is never touched.
- Scoring runs in eval mode (BatchNorm uses its pre-trained statistics and its
  running statistics are not updated); every parameter is scored even if frozen.
  Mode and ``requires_grad`` flags are restored afterwards.
- A parameter a task's output does not reach has no entry in that task's scores:
  the keys of ``scores[t]`` are task t's subnetwork.
- Data-parallel: when a ``torch.distributed`` process group is initialised, each
  rank scores the batches it is given (its shard) and the scores are all-reduced
  (summed), so every rank gets the scores of the whole data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from cut_plugin.checks import unwrap_model
from cut_plugin.parallel import several_ranks
from cut_plugin.state import scoring_state
from cut_plugin.vocabulary import (
    Loss,
    check_choice,
    check_losses,
    check_targets,
    check_tasks,
    iterate_batches,
    model_device_dtype,
    run_model,
    scalar_loss,
)

__all__ = [
    "CHANNEL_CRITERIA",
    "CRITERIA",
    "ChannelCriterion",
    "Criterion",
    "ElementCriterion",
    "TaskScores",
    "all_reduce_scores",
    "score_tasks",
]

ElementCriterion = Literal["taylor", "magnitude", "fisher"]
ChannelCriterion = Literal["activation"]
Criterion = Literal[ElementCriterion, ChannelCriterion]
CRITERIA: tuple[str, ...] = get_args(ElementCriterion)
"""The element criteria (``score_tasks``)."""
CHANNEL_CRITERIA: tuple[str, ...] = get_args(ChannelCriterion)
"""The channel criteria (:func:`cut_plugin.channel_scoring.score_channels`): structured path only."""
TaskScores = dict[str, dict[str, Tensor]]


def check_criterion(criterion: Any) -> str:
    """Return ``criterion`` if it is an element or a channel criterion, else raise naming them."""
    return check_choice("criterion", criterion, CRITERIA + CHANNEL_CRITERIA)


def check_element_criterion(criterion: Any, *, route: str = "score_tasks") -> str:
    """Return an element criterion; a channel criterion raises naming ``route`` and the fix."""
    if criterion in CHANNEL_CRITERIA:
        raise ValueError(
            f"criterion {criterion!r} scores output channels (from activation gradients), not "
            f"single weights, so {route}, which needs element scores, cannot use it; use one of "
            f"{list(CRITERIA)} there, or prune channels with Torch-Pruning "
            "(adapters.torch_pruning.cut_prune(granularity='channel'), CUTPruner, CUTImportance), "
            "which take criterion='activation'"
        )
    return check_choice("criterion", criterion, CRITERIA)


def score_tasks(
    model: nn.Module,
    batches: Iterable[Any],
    losses: Mapping[str, Loss],
    *,
    tasks: Sequence[str] | None = None,
    criterion: Criterion = "taylor",
    max_batches: int | None = None,
    progress: bool = True,
    task_names: Sequence[str] | None = None,
) -> TaskScores:
    """Return per-task, per-element importance: ``{task: {param_name: Tensor(param.shape)}}``.

    Args:
        model: a multi-task model whose forward returns ``{task: Tensor}`` (or a
            tuple named by ``task_names``). Not changed: weights, ``.grad``,
            ``requires_grad`` and train/eval mode are as they were afterwards.
        batches: ``(inputs, {task: target})`` pairs, e.g. a DataLoader.
        losses: ``{task: loss_fn(output, target) -> scalar}``; each task is scored
            by its own unweighted loss only.
        tasks: the tasks to score (default: every task the model returns).
        criterion: ``"taylor"`` (CUT), ``"magnitude"`` or ``"fisher"``. (``"activation"``
            scores channels, not elements: :func:`cut_plugin.channel_scoring.score_channels`;
            here it raises.)
        max_batches: stop after this many batches (the paper uses ~50).
        progress: show a progress bar.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    model = unwrap_model(model, operation="score_tasks")
    criterion = check_element_criterion(criterion)  # type: ignore[assignment]
    if tasks is not None:
        tasks = check_tasks(tasks)
        check_losses(losses, tasks)
    named = [(name, p) for name, p in model.named_parameters() if p.is_floating_point()]
    if not named:
        raise ValueError(f"{type(model).__name__} has no floating-point parameters to score")
    params = [p for _, p in named]
    device, _ = model_device_dtype(model)
    selected: list[str] = []
    scores: TaskScores = {}
    with scoring_state(model), torch.enable_grad():
        bar = tqdm(
            iterate_batches(batches, max_batches=max_batches),
            total=max_batches,
            desc=f"scoring ({criterion})",
            disable=not progress,
            leave=False,
        )
        for index, inputs, raw_targets in bar:
            outputs = run_model(model, inputs, task_names)
            if not selected:
                selected = check_tasks(tasks if tasks is not None else list(outputs), list(outputs))
                task_losses = check_losses(losses, selected)
                scores = {t: {} for t in selected}
            targets = check_targets(raw_targets, selected, index)
            for position, task in enumerate(selected):
                target = (
                    targets[task].to(device) if isinstance(targets[task], Tensor) else targets[task]
                )
                loss = scalar_loss(task_losses[task], outputs[task], target, task=task, index=index)
                grads = torch.autograd.grad(
                    loss, params, retain_graph=position < len(selected) - 1, allow_unused=True
                )
                _accumulate(scores[task], named, grads, criterion)
            if criterion == "magnitude":
                break  # one batch tells which parameters each task uses
    if criterion != "magnitude":
        all_reduce_scores(scores)
    return {
        task: _finish(task_scores, dict(named), criterion) for task, task_scores in scores.items()
    }


def all_reduce_scores(scores: TaskScores) -> None:
    """Sum the accumulators over the ranks of an initialised ``torch.distributed`` process group.

    Each rank scores its own shard of the data; the sum equals scoring all shards
    in one process (the criteria are sums over batches). Keys are sorted so every
    rank reduces the same tensors in the same order.
    """
    if not several_ranks():
        return
    dist = torch.distributed
    for task in sorted(scores):
        for name in sorted(scores[task]):
            dist.all_reduce(scores[task][name], op=dist.ReduceOp.SUM)


def _accumulate(
    acc: dict[str, Tensor],
    named: list[tuple[str, nn.Parameter]],
    grads: Sequence[Tensor | None],
    criterion: str,
) -> None:
    with torch.no_grad():
        for (name, p), grad in zip(named, grads, strict=True):
            if grad is None:
                continue
            if criterion == "taylor":
                term = (p.detach() * grad).abs_()
            elif criterion == "fisher":
                term = grad.square()
            else:
                term = torch.zeros_like(grad)
            if name in acc:
                acc[name].add_(term)
            else:
                acc[name] = term


def _finish(
    acc: dict[str, Tensor], params: dict[str, nn.Parameter], criterion: str
) -> dict[str, Tensor]:
    with torch.no_grad():
        if criterion == "magnitude":
            return {name: params[name].detach().abs() for name in acc}
        if criterion == "fisher":
            return {
                name: 0.5 * params[name].detach().square() * value for name, value in acc.items()
            }
        return acc
