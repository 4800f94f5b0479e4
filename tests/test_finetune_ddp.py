"""Data-parallel fine-tuning: two gloo ranks, each on half of every global batch, equal one process.

One spawn runs every scenario (starting processes is the slow part):
- ``finetune`` (Adam) of a weight-masked CUT model: masks stay zero, the pruning
  record is kept, every rank returns the same model as one process on the full batches;
- ``train_tasks`` with SGD + momentum on a conv net whose BatchNorm is frozen (eval
  statistics; train-mode BatchNorm would normalise with each rank's own half-batch);
- unequal numbers of batches per rank end (DDP's Join) with the ranks still equal;
- the returned model is plain again: a later backward is not averaged over the ranks.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

from cut_plugin import finetune, read_record
from cut_plugin.training import train_tasks
from tests.toy_models import MLPNet

WORLD = 2
GLOBAL_BATCH = 8
STEPS = 3


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that stays in eval mode (running statistics) even under ``model.train()``."""

    def train(self, mode: bool = True) -> FrozenBatchNorm2d:
        return super().train(False)


class ConvNet(nn.Module):
    """Conv → frozen BN → ReLU → pool, two heads."""

    tasks = ("a", "b")

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1), FrozenBatchNorm2d(6), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )  # fmt: skip
        self.heads = nn.ModuleDict({"a": nn.Linear(24, 3), "b": nn.Linear(24, 2)})
        with torch.no_grad():
            bn = self.trunk[1]
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.trunk(x)
        return {t: head(h) for t, head in self.heads.items()}


def _batches(shape: tuple[int, ...], classes: dict[str, int], count: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(GLOBAL_BATCH, *shape, generator=g),
            {t: torch.randint(0, c, (GLOBAL_BATCH,), generator=g) for t, c in classes.items()},
        )
        for _ in range(count)
    ]


def _shard(batches: list, rank: int) -> list:
    """Rank ``rank``'s half of every global batch."""
    half = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
    return [(x[half], {t: y[half] for t, y in ys.items()}) for x, ys in batches]


def _mlp_batches() -> list:
    return _batches((12,), {"p": 4, "q": 3}, STEPS, seed=1)


def _conv_batches() -> list:
    return _batches((1, 8, 8), {"a": 3, "b": 2}, STEPS, seed=2)


def _masked_model() -> nn.Module:
    # imported here: the spawned ranks need not import Torch-Pruning
    from adapters.torch_pruning import cut_prune

    torch.manual_seed(0)
    model = MLPNet()
    data = _mlp_batches()
    losses = dict.fromkeys(MLPNet.tasks, F.cross_entropy)
    return cut_prune(
        model, data[0][0], tasks=list(MLPNet.tasks), losses=losses, data=data,
        pruning_ratio=0.5, granularity="weight", progress=False,
    )  # fmt: skip


def _sgd(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def _runs(
    masked: nn.Module, rank: int | None, distributed: Any = "auto"
) -> dict[str, dict[str, Tensor]]:
    """Every scenario's trained state; ``rank=None`` is the single process on the full batches."""
    shard = (lambda b: b) if rank is None else (lambda b: _shard(b, rank))
    losses = dict.fromkeys(MLPNet.tasks, F.cross_entropy)
    masks = read_record(masked).masks
    tuned = finetune(
        masked, shard(_mlp_batches()), losses, steps=STEPS, lr=1e-2, masks=masks,
        progress=False, distributed=distributed,
    )  # fmt: skip
    torch.manual_seed(0)
    conv = ConvNet()
    train_tasks(
        conv, shard(_conv_batches()), dict.fromkeys(ConvNet.tasks, F.cross_entropy),
        steps=STEPS, optimizer=_sgd, progress=False, distributed=distributed,
    )  # fmt: skip
    return {
        "finetune": {k: v.clone() for k, v in tuned.state_dict().items()},
        "record": {"masks": read_record(tuned).masks, "tasks": read_record(tuned).tasks},
        "sgd": {k: v.clone() for k, v in conv.state_dict().items()},
    }


def _worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        masked = torch.load(os.path.join(folder, "masked.pt"), weights_only=False)
        result = _runs(masked, rank)
        # unequal shards: rank 0 has two batches, rank 1 one; Join ends both with equal weights
        torch.manual_seed(0)
        uneven = MLPNet()
        data = _shard(_mlp_batches(), rank)[: 2 - rank]
        train_tasks(
            uneven, data, dict.fromkeys(MLPNet.tasks, F.cross_entropy), epochs=1,
            optimizer=_sgd, progress=False,
        )  # fmt: skip
        result["uneven"] = dict(uneven.state_dict())
        # the wrapper is gone: a backward now gives this rank's own gradient
        x, ys = _shard(_mlp_batches(), rank)[0]
        uneven.zero_grad()
        F.cross_entropy(uneven(x)["p"], ys["p"]).backward()
        result["grad"] = {"local": uneven.heads["p"].weight.grad.clone()}
        torch.save(result, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_equal_one_process(tmp_path) -> None:
    masked = _masked_model()
    before = read_record(masked)
    assert before is not None and before.masks is not None
    torch.save(masked, tmp_path / "masked.pt")
    mp.start_processes(
        _worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn"
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    single = _runs(masked, None)
    # it trained (a no-op could not pass)
    assert not torch.equal(single["finetune"]["trunk.0.weight"], masked.trunk[0].weight)
    for scenario in ("finetune", "sgd"):
        for name, value in single[scenario].items():
            for rank in ranks:
                torch.testing.assert_close(rank[scenario][name], value, rtol=1e-4, atol=1e-5)
    for rank in ranks:
        assert rank["record"]["tasks"] == before.tasks
        assert rank["record"]["masks"].keys() == before.masks.keys()
        for name, mask in before.masks.items():
            assert torch.equal(rank["record"]["masks"][name], mask)
            assert not rank["finetune"][name][~mask.expand_as(rank["finetune"][name])].any()
    for name, value in ranks[0]["uneven"].items():
        torch.testing.assert_close(ranks[1]["uneven"][name], value, rtol=0, atol=0)
    assert not torch.equal(ranks[0]["grad"]["local"], ranks[1]["grad"]["local"])


def test_distributed_option_is_checked() -> None:
    model = MLPNet()
    data = _shard(_mlp_batches(), 0)
    losses = dict.fromkeys(MLPNet.tasks, F.cross_entropy)
    with pytest.raises(ValueError, match="process group"):
        finetune(model, data, losses, steps=1, lr=1e-3, distributed=True, progress=False)
    with pytest.raises(ValueError, match="'auto', True or False"):
        finetune(model, data, losses, steps=1, lr=1e-3, distributed="yes", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'auto', True or False"):
        train_tasks(model, data, losses, steps=1, lr=1e-3, distributed=1, progress=False)  # type: ignore[arg-type]
