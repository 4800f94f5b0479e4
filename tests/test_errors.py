"""Bad input gets a ValueError/TypeError naming the problem and the fix; the model is unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import adapters.torch_pruning as atp
from cut_plugin import cut_masks, score_tasks, select_tasks
from tests.toy_models import (
    ConcatNet,
    ResidualNet,
    UntraceableNoHeads,
    example_input,
    losses_for,
    make_batches,
    same_state,
    state_snapshot,
)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = ResidualNet().eval()
    return model, make_batches(model, 1), losses_for(model)


def _prune(model, batches, default_losses, **kw):
    args = {
        "tasks": ["a", "b"],
        "losses": default_losses,
        "data": batches,
        "pruning_ratio": 0.5,
        "progress": False,
    }
    args.update(kw)
    return atp.cut_prune(model, example_input(model, 1), **args)


BAD_CUT_PRUNE = [
    ({"tasks": ["a", "zebra"]}, ValueError, r"unknown task.*zebra.*the model's tasks are"),
    ({"tasks": []}, ValueError, "tasks is empty"),
    ({"tasks": "a"}, TypeError, r"use \['a'\]"),
    ({"pruning_ratio": -0.1}, ValueError, r"in \[0, 1\)"),
    ({"pruning_ratio": 1.0}, ValueError, r"in \[0, 1\)"),
    ({"pruning_ratio": float("nan")}, ValueError, r"in \[0, 1\)"),
    ({"pruning_ratio": "half"}, TypeError, "pruning_ratio must be a float"),
    ({"losses": {"a": F.cross_entropy}}, ValueError, r"losses has no entry for task\(s\) \['b'\]"),
    ({"criterion": "hessian"}, ValueError, "criterion must be one of"),
    ({"rule": "majority"}, ValueError, "rule must be one of"),
    ({"data": []}, ValueError, "yielded no batch"),
    (
        {"data": [(torch.randn(2, 1, 16, 16), {"a": torch.zeros(2, dtype=torch.long)})]},
        ValueError,
        r"batch 0 has no target for task\(s\) \['b'\]",
    ),
    ({"data": [torch.randn(2, 1, 16, 16)]}, TypeError, "pair"),
]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    BAD_CUT_PRUNE,
    ids=[str(list(c[0])) + str(i) for i, c in enumerate(BAD_CUT_PRUNE)],
)
@pytest.mark.parametrize("granularity", ["channel", "weight"])
def test_cut_prune_rejects_bad_input_and_leaves_model(setup, kwargs, error, message, granularity):
    model, batches, losses = setup
    snapshot = state_snapshot(model)
    with pytest.raises(error, match=message):
        _prune(model, batches, losses, granularity=granularity, **kwargs)
    assert same_state(model, snapshot)


def test_nan_loss_while_scoring_names_task_and_batch(setup):
    model, batches, losses = setup
    bad_losses = dict(losses, b=lambda out, y: out.sum() * float("nan"))
    with pytest.raises(ValueError, match=r"task 'b'.*batch 0"):
        score_tasks(model, batches, bad_losses, tasks=["a", "b"], progress=False)


def test_non_scalar_loss(setup):
    model, batches, losses = setup
    with pytest.raises(ValueError, match="scalar"):
        score_tasks(
            model,
            batches,
            dict(losses, a=lambda o, y: F.cross_entropy(o, y, reduction="none")),
            tasks=["a"],
            progress=False,
        )


def test_tuple_output_without_task_names():
    model = ConcatNet()
    with pytest.raises(TypeError, match="task_names"):
        select_tasks(model, ["left"])
    with pytest.raises(TypeError, match="task_names"):
        score_tasks(model, make_batches(model, 1), losses_for(model), progress=False)


def test_untraceable_model_without_heads():
    with pytest.raises(ValueError, match="cannot trace it.*heads"):
        select_tasks(UntraceableNoHeads(), ["p"])


def test_non_module_and_bad_example_inputs(setup):
    model, batches, losses = setup
    with pytest.raises(TypeError, match="nn.Module"):
        select_tasks("model", ["a"])
    with pytest.raises(TypeError, match="example_inputs"):
        atp.output_layers(model, "x")
    with pytest.raises(TypeError, match="mapping"):
        score_tasks(model, batches, [F.cross_entropy], progress=False)


def test_cut_masks_bad_scores(setup):
    model, _, _ = setup
    with pytest.raises(TypeError, match="score_tasks"):
        cut_masks(model, {}, pruning_ratio=0.5)
    with pytest.raises(ValueError, match="conv/linear weight"):
        cut_masks(model, {"a": {"nothing": torch.ones(1)}}, pruning_ratio=0.5)


def test_load_pruned_bad_file(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"hello": 1}, path)
    with pytest.raises(ValueError, match="save_pruned"):
        atp.load_pruned(path, ResidualNet, torch.randn(1, 1, 16, 16))
    with pytest.raises(TypeError, match="model_factory"):
        atp.load_pruned(path, "ResidualNet", torch.randn(1, 1, 16, 16))
