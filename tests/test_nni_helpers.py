"""Shared pieces of the NNI tests (no tests here): an NNI TorchEvaluator, ratio counting, references."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from cut_plugin import apply_masks
from cut_plugin.vocabulary import as_task_outputs


def evaluator_for(
    model: nn.Module, batches: Sequence[Any], losses: Mapping[str, Any], lr: float = 0.01
) -> Any:
    """An NNI ``TorchEvaluator`` training on ``batches`` with the sum of the task losses."""
    import nni
    from nni.compression.utils import TorchEvaluator

    def training_step(batch: Any, model: nn.Module) -> Tensor:
        inputs, targets = batch
        outputs = model(inputs)
        return sum(losses[t](outputs[t], targets[t]) for t in outputs)  # type: ignore[return-value]

    def training_func(
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        training_step: Any,
        lr_schedulers: Any = None,
        max_steps: int | None = None,
        max_epochs: int | None = None,
    ) -> None:
        model.train()
        for batch in itertools.islice(itertools.cycle(batches), max_steps or len(batches)):
            optimizer.zero_grad()
            training_step(batch, model).backward()
            optimizer.step()

    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=lr)
    return TorchEvaluator(training_func, optimizer, training_step)


def masked_blocks(mask: Tensor, granularity: str) -> tuple[int, int]:
    """(masked, total) elements, or output channels for ``"out_channel"``."""
    if granularity == "out_channel":
        rows = mask.reshape(mask.shape[0], -1)
        return int((rows.sum(1) == 0).sum()), rows.shape[0]
    return int((mask == 0).sum()), mask.numel()


def outputs(
    model: nn.Module, x: Tensor, task_names: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """The model's outputs in eval mode as ``{task: Tensor}`` (no grad)."""
    model.eval()
    with torch.no_grad():
        return as_task_outputs(model(x), task_names)


def max_difference(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Largest absolute difference over the tasks of ``a`` (which ``b`` must have, same shapes)."""
    assert a.keys() == b.keys()
    assert all(a[t].shape == b[t].shape for t in a)
    return max(float((a[t] - b[t]).abs().max()) for t in a)


def masked_reference(
    plain: nn.Module, masks: Mapping[str, Tensor], x: Tensor, task_names: Any = None
) -> nn.Module:
    """What a compact model must compute: the masks (BatchNorm aligned) applied to ``plain``."""
    from adapters.torch_pruning import align_masks

    return apply_masks(plain, align_masks(plain, masks, x, task_names=task_names))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_masks(masks: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Mapping[str, Tensor]]:
    """NNI masks of conv/linear layers only (CUTPruner also masks BatchNorm: 1-D weights)."""
    return {name: m for name, m in masks.items() if m["weight"].dim() > 1}
