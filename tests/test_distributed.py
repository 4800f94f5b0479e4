"""Data-parallel scoring: two gloo ranks on CPU, each on its shard, equal the single process."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cut_plugin import score_tasks
from tests.toy_models import MLPNet, losses_for, make_batches


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = MLPNet()
        shard = make_batches(model, 4)[rank::world]
        scores = score_tasks(model, shard, losses_for(model), progress=False)
        if rank == 0:
            torch.save(scores, out)
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_process(tmp_path):
    out = str(tmp_path / "scores.pt")
    mp.start_processes(_worker, args=(2, _free_port(), out), nprocs=2, start_method="spawn")
    parallel = torch.load(out, weights_only=True)
    torch.manual_seed(0)
    model = MLPNet()
    single = score_tasks(model, make_batches(model, 4), losses_for(model), progress=False)
    assert parallel.keys() == single.keys()
    for task in single:
        assert parallel[task].keys() == single[task].keys()
        for name, value in single[task].items():
            torch.testing.assert_close(parallel[task][name], value, rtol=1e-5, atol=1e-7)


def _pam_worker(rank: int, world: int, port: int, out: str) -> None:
    from pam_plugin import PAMMerger
    from tests.test_pam_networks import networks_for

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        x, labels = _pam_data()
        shard = slice(rank * 20, (rank + 1) * 20)
        merged = PAMMerger(alpha_fc=0.05).merge(
            networks_for("mlp", ("A", "B"), same=True),
            x[shard],
            {t: y[shard] for t, y in labels.items()},
        )
        if rank == 0:
            torch.save({"sizes": merged.group_sizes(), "out": merged.eval()(x)}, out)
    finally:
        dist.destroy_process_group()


def _pam_data():
    from tests.test_pam_networks import inputs_for

    x = inputs_for("mlp", 40)
    g = torch.Generator().manual_seed(3)
    return x, {
        "A": torch.randint(0, 3, (40,), generator=g),
        "B": torch.randint(0, 3, (40,), generator=g),
    }


def test_pam_two_ranks_equal_one_process(tmp_path):
    from pam_plugin import PAMMerger
    from tests.test_pam_networks import networks_for

    out = str(tmp_path / "pam.pt")
    mp.start_processes(_pam_worker, args=(2, _free_port(), out), nprocs=2, start_method="spawn")
    parallel = torch.load(out, weights_only=False)
    x, labels = _pam_data()
    single = PAMMerger(alpha_fc=0.05).merge(networks_for("mlp", ("A", "B"), same=True), x, labels)
    assert parallel["sizes"] == single.group_sizes()
    assert any("shared" in sizes for sizes in single.group_sizes().values())
    for task, value in single.eval()(x).items():
        torch.testing.assert_close(parallel["out"][task], value)
