"""PruningRecord: one writer, one reader; it survives copies, fine-tuning and save/load."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import fx

import adapters.torch_pruning as atp
from cut_plugin import (
    CUTConfig,
    PruningRecord,
    finetune,
    read_record,
    select_tasks,
    write_record,
)
from tests.toy_models import (
    ConcatNet,
    ResidualNet,
    example_input,
    init_nontrivial,
    losses_for,
    make_batches,
)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = init_nontrivial(ResidualNet())
    return model, make_batches(model, 2), losses_for(model)


def test_write_then_read_and_update_one_field():
    model = torch.nn.Linear(2, 2)
    assert read_record(model) is None
    write_record(model, PruningRecord(tasks=["a"], history=[("fc", True, [0])]))
    write_record(model, config=CUTConfig(rule="any"))
    record = read_record(model)
    assert record.tasks == ["a"] and record.history == [("fc", True, [0])]
    assert record.config == CUTConfig(rule="any")
    state = record.to_state()
    assert PruningRecord.from_state(state) == record


@pytest.mark.parametrize("granularity", ["channel", "weight"])
def test_record_survives_deepcopy_and_finetune(setup, tmp_path, granularity):
    model, batches, losses = setup
    x = example_input(model, 1)
    compact = atp.cut_prune(
        model, x, tasks=["a", "seg"], losses=losses, data=batches, pruning_ratio=0.5,
        granularity=granularity, progress=False,
    )  # fmt: skip
    assert isinstance(compact, ResidualNet)  # heads dropped from the user's own class
    record = read_record(compact)
    assert record is not None and record.tasks == ["a", "seg"]
    assert (record.masks is not None) == (granularity == "weight")
    copied = copy.deepcopy(compact)
    assert read_record(copied) == record
    tuned = finetune(
        compact, batches, {t: losses[t] for t in ("a", "seg")}, steps=2, lr=1e-3,
        masks=record.masks, progress=False,
    )  # fmt: skip
    assert read_record(tuned) == record
    # The README's flow: prune, fine-tune, save, load.
    tuned.eval()
    atp.save_pruned(tuned, tmp_path / "m.pt")
    loaded = atp.load_pruned(tmp_path / "m.pt", ResidualNet, x)
    assert not loaded.training  # saved in eval mode, loaded in eval mode
    assert read_record(loaded).tasks == ["a", "seg"]
    probe = example_input(model, 3)
    for task, value in tuned(probe).items():
        torch.testing.assert_close(loaded(probe)[task], value, rtol=0, atol=0)


def test_record_survives_deepcopy_of_a_graph_module(setup):
    model, _, _ = setup
    traced = select_tasks(model, ["a"])  # no example inputs: the torch.fx route
    assert isinstance(traced, fx.GraphModule)
    masks = {"heads.a.2.weight": torch.ones(3, 16, dtype=torch.bool)}
    write_record(traced, PruningRecord(tasks=["a"], masks=masks, history=[("x", True, [1])]))
    copied = copy.deepcopy(traced)
    assert read_record(copied) == read_record(traced)
    assert copied.cut_pam_masks.keys() == masks.keys()


def test_loaded_model_keeps_the_saved_train_mode(setup, tmp_path):
    model, batches, losses = setup
    x = example_input(model, 1)
    compact = atp.cut_prune(
        model, x, tasks=["a"], losses=losses, data=batches, pruning_ratio=0.3, progress=False
    )
    compact.train()
    atp.save_pruned(compact, tmp_path / "m.pt")
    assert atp.load_pruned(tmp_path / "m.pt", ResidualNet, x).training


def test_baseline_prune_tuple_output_round_trip(tmp_path):
    torch.manual_seed(0)
    model = init_nontrivial(ConcatNet()).eval()
    x = example_input(model, 2)
    names = list(ConcatNet.tasks)
    compact = atp.baseline_prune(
        model, x[:1], tasks=names[:1], pruning_ratio=0.5, task_names=names
    ).eval()
    atp.save_pruned(compact, tmp_path / "m.pt")
    loaded = atp.load_pruned(tmp_path / "m.pt", ConcatNet, x[:1]).eval()
    assert read_record(loaded).task_names == names
    for task, value in compact(x).items():
        torch.testing.assert_close(loaded(x)[task], value, rtol=0, atol=0)


def test_prune_by_masks_keeps_tasks_and_drops_stale_masks(setup):
    model, batches, losses = setup
    x = example_input(model, 1)
    masked = atp.cut_prune(
        model, x, tasks=["a", "b"], losses=losses, data=batches, pruning_ratio=0.5,
        granularity="weight", progress=False,
    )  # fmt: skip
    compact = atp.prune_by_masks(masked, read_record(masked).masks, x)
    record = read_record(compact)
    assert record.tasks == ["a", "b"] and record.masks is None and record.history
    assert not hasattr(compact, "cut_pam_masks")
