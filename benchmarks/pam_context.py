"""The PAM benchmark's per-split context: data, validation, merge batch, single networks, budgets.

Used by :mod:`benchmarks.pam_suite` (the table) and :mod:`benchmarks.pam_pruning`
(the pruning loop); see the former's docstring for the protocol.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from benchmarks.data import IGNORE_INDEX, Split, TaskData, batches, load_data
from benchmarks.pam_config import PAM_MODELS, PAMSuiteConfig
from benchmarks.training import evaluate, pretrained
from cut_plugin.vocabulary import Loss
from pam_plugin import MergedNetwork, retrain

__all__ = ["PAMContext", "guarded_loss", "own_rows", "prepare_context"]


def guarded_loss(loss: Loss, output: Tensor, target: Tensor) -> Tensor:
    """``loss`` (the data's, ``TaskData.losses``); 0 when the batch holds none of the task's images."""
    if not target.is_floating_point() and bool((target == IGNORE_INDEX).all()):
        return output.sum() * 0.0
    return loss(output, target)


def own_rows(split: Split, task: str) -> Split:
    """The rows of ``split`` that belong to ``task`` (every row for 0/1 labels), only its target."""
    target = split.targets[task]
    keep = (
        torch.ones(len(split), dtype=torch.bool, device=target.device)
        if target.dim() > 1
        else target != IGNORE_INDEX
    )
    return split.select(torch.nonzero(keep).flatten(), [task])


@dataclass(frozen=True, eq=False)
class PAMContext:
    """One split: training images (minus validation), validation, merge batch, references."""

    key: str
    data: TaskData
    validation: Split
    merge_inputs: Tensor
    merge_labels: dict[str, Tensor]
    networks: dict[str, nn.Module]
    reference: dict[str, float]
    losses: dict[str, Loss]
    config: PAMSuiteConfig
    seed: int

    def train_split(self, tasks: tuple[str, ...]) -> Split:
        """All training images for a merged network, the task's own for a single network."""
        return self.data.for_task(tasks[0]).train if len(tasks) == 1 else self.data.train

    def stream(self, tasks: tuple[str, ...], seed: int) -> Iterator[tuple[Tensor, dict]]:
        """Endless shuffled training batches (each pass reshuffled from ``seed``)."""
        split = self.train_split(tasks)
        for epoch in itertools.count():
            yield from batches(split, self.config.batch_size, seed=seed * 7919 + epoch)

    def accuracy(self, model: nn.Module, split: Split) -> dict[str, float]:
        """``{task: accuracy}`` of ``model`` on ``split``."""
        return evaluate(model, split, batch_size=self.config.eval_batch_size)

    def meets(self, accuracy: Mapping[str, float]) -> bool:
        """Every task within the tolerance of its single-task network."""
        tolerance = self.config.accuracy_tolerance / 100.0
        return all(a >= self.reference[t] - tolerance - 1e-9 for t, a in accuracy.items())

    def retrain(self, model: MergedNetwork, steps: int, seed: int) -> MergedNetwork:
        """``model`` after ``steps`` of joint retraining, in place (no-op for 0 steps)."""
        if steps:
            losses = {t: self.losses[t] for t in model.tasks}
            stream = self.stream(model.tasks, seed)
            retrain(model, stream, losses, max_steps=steps, lr=self.config.lr, inplace=True,
                    progress=False)  # fmt: skip
        return model


def prepare_context(
    key: str, config: PAMSuiteConfig, seed: int, progress: bool, device: str = "cpu"
) -> PAMContext:
    """Load ``key``, hold out validation images, train (or load) the single-task networks.

    The networks live on ``device``; the data, merge images included, on the host.
    """
    full = load_data(key, seed=seed, **config.data_options(key))
    generator = torch.Generator().manual_seed(seed + 1)
    order = torch.randperm(len(full.train), generator=generator, device="cpu")
    held = round(config.validation_fraction * len(order))
    validation, train = full.train.select(order[:held]), full.train.select(order[held:])
    data_config = {**full.config, "validation_fraction": config.validation_fraction}
    data = TaskData(full.name, train, full.test, full.num_classes, full.task_types, data_config)
    model, options = PAM_MODELS[key]
    networks = {
        t: pretrained(
            model, data, seed=seed, task=t, model_kwargs=options, epochs=config.pretrain_epochs,
            batch_size=config.batch_size, cache_dir=config.cache_dir, progress=progress,
            device=device,
        )
        for t in data.task_names
    }  # fmt: skip
    reference = {t: evaluate(n, own_rows(validation, t), batch_size=config.eval_batch_size)[t]
                 for t, n in networks.items()}  # fmt: skip
    merge = torch.randperm(len(train), generator=generator.manual_seed(seed + 2), device="cpu")
    merge = merge[: config.merge_samples]
    labels = {t: train.targets[t][merge] for t in data.task_names}
    return PAMContext(key, data, validation, train.inputs[merge], labels, networks, reference,
                    {t: partial(guarded_loss, f) for t, f in data.losses().items()}, config, seed)  # fmt: skip
