"""A ``DistributedDataParallel`` model is treated like its ``.module`` (with a warning naming it).

One gloo rank in this process (a ``FileStore`` in the test's directory, world size 1): the
entry points unwrap the model, so their results equal those on the plain module.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import adapters.torch_pruning as atp
from cut_plugin import score_tasks, select_tasks
from tests.toy_models import (
    ResidualNet,
    example_input,
    init_nontrivial,
    losses_for,
    make_batches,
    same_state,
    state_snapshot,
)

WARNING = r"DistributedDataParallel.*model\.module"


@pytest.fixture
def one_rank(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_ddp_model_is_treated_like_its_module(one_rank):
    model = init_nontrivial(ResidualNet()).eval()
    wrapped = DistributedDataParallel(model)
    snapshot = state_snapshot(model)
    x = example_input(model)
    batches = make_batches(model, 1)
    losses = losses_for(model)

    with pytest.warns(UserWarning, match=WARNING):
        selected = select_tasks(wrapped, ["a"], example_inputs=x[:1])
    assert isinstance(selected, ResidualNet) and not isinstance(selected, DistributedDataParallel)
    torch.testing.assert_close(selected(x)["a"], model(x)["a"], rtol=0, atol=0)

    with pytest.warns(UserWarning, match=WARNING):
        scores = score_tasks(wrapped, batches, losses, tasks=["a", "b"], progress=False)
    plain = score_tasks(model, batches, losses, tasks=["a", "b"], progress=False)
    assert scores.keys() == plain.keys()
    for task in plain:
        assert scores[task].keys() == plain[task].keys()  # names without "module."
        assert not any(name.startswith("module.") for name in scores[task])
        for name, value in plain[task].items():
            torch.testing.assert_close(scores[task][name], value, rtol=0, atol=0)

    options = {"tasks": ["a"], "losses": losses, "data": batches, "pruning_ratio": 0.3}
    with pytest.warns(UserWarning, match=WARNING):
        compact = atp.cut_prune(wrapped, x[:1], progress=False, **options)
    reference = atp.cut_prune(model, x[:1], progress=False, **options)
    assert isinstance(compact, ResidualNet) and list(compact(x)) == ["a"]
    assert {n: p.shape for n, p in compact.named_parameters()} == {
        n: p.shape for n, p in reference.named_parameters()
    }
    torch.testing.assert_close(compact(x)["a"], reference(x)["a"], rtol=0, atol=0)
    assert sum(p.numel() for p in compact.parameters()) < sum(p.numel() for p in model.parameters())
    assert same_state(model, snapshot)  # the wrapped module is untouched
    assert isinstance(wrapped.module, ResidualNet)
