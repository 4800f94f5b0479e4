"""Data parallelism over an initialised ``torch.distributed`` process group.

One predicate (:func:`several_ranks`) decides for scoring (all-reduced scores),
PAM's statistics (gathered samples) and training (``DistributedDataParallel``);
:func:`data_parallel` wraps a multi-task model for DDP training of some tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from cut_plugin.vocabulary import as_task_outputs

__all__ = [
    "DISTRIBUTED",
    "Distributed",
    "data_parallel",
    "rank",
    "several_ranks",
    "use_data_parallel",
]

Distributed = bool | Literal["auto"]
"""``"auto"``: DDP when a process group of 2+ ranks is initialised; True: DDP (needs one); False: never."""
DISTRIBUTED: tuple[Distributed, ...] = ("auto", True, False)


def several_ranks() -> bool:
    """Whether a ``torch.distributed`` process group of two or more ranks is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _TrainedOutputs(nn.Module):
    """The model's outputs for the trained tasks only, as ``{task: Tensor}``.

    DDP waits for a gradient of every parameter reachable from what the forward
    returns: a head whose output no loss uses would stall it, so only the trained
    tasks' outputs are returned (with ``find_unused_parameters`` for the rest).
    """

    def __init__(self, model: nn.Module, tasks: Sequence[str], task_names: Sequence[str] | None):
        super().__init__()
        self.model = model
        self.tasks = list(tasks)
        self.task_names = list(task_names) if task_names is not None else None

    def forward(self, *inputs: Any) -> dict[str, Tensor]:
        outputs = as_task_outputs(self.model(*inputs), self.task_names)
        return {t: outputs[t] for t in self.tasks if t in outputs}


def data_parallel(
    model: nn.Module, tasks: Sequence[str], *, task_names: Sequence[str] | None = None
) -> nn.Module:
    """``model`` wrapped for data-parallel training of ``tasks`` (DDP over the default group).

    Returns a ``DistributedDataParallel`` module whose forward gives the trained
    tasks' outputs ``{task: Tensor}``; it shares ``model``'s parameters (training
    it trains ``model``). Building it broadcasts rank 0's parameters and buffers
    to every rank. ``find_unused_parameters=True``: a parameter no trained task
    reaches in a step (a head of an untrained task, a task skipped by
    ``ignore_index``) keeps its gradient as a single process would.
    """
    return DistributedDataParallel(
        _TrainedOutputs(model, tasks, task_names), find_unused_parameters=True
    )


def use_data_parallel(distributed: Any) -> bool:
    """Whether ``distributed`` asks for DDP now; raises for a bad value or a missing group."""
    if distributed not in DISTRIBUTED or not isinstance(distributed, bool | str):
        raise ValueError(
            f"distributed must be 'auto', True or False, got {distributed!r}: 'auto' trains "
            "data-parallel when a torch.distributed process group is initialised"
        )
    initialised = dist.is_available() and dist.is_initialized()
    if distributed is True and not initialised:
        raise ValueError(
            "distributed=True needs an initialised torch.distributed process group: call "
            "torch.distributed.init_process_group (e.g. under torchrun) first, or pass "
            "distributed='auto' or False"
        )
    if distributed == "auto":
        return several_ranks()
    return bool(distributed)


def rank() -> int:
    """This process's rank in the default process group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
