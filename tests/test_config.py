"""CUTConfig: one validated configuration behind every CUT entry point."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import adapters.torch_pruning as atp
from adapters import registry
from cut_plugin import CUTConfig, cut_masks, read_record, score_tasks, select_tasks
from cut_plugin.config import resolve_config
from tests.toy_models import ResidualNet, example_input, init_nontrivial, losses_for, make_batches


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = init_nontrivial(ResidualNet())
    return model, make_batches(model, 2), losses_for(model)


def test_defaults_and_frozen():
    config = CUTConfig()
    assert (config.criterion, config.rule, config.votes, config.calibrate) == (
        "taylor",
        "vote",
        2,
        True,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rule = "any"  # type: ignore[misc]
    assert all(f.metadata.get("help") for f in dataclasses.fields(CUTConfig))
    assert CUTConfig.from_dict(CUTConfig(rule="weighted", weights={"a": 2}).to_dict()) == CUTConfig(
        rule="weighted", weights={"a": 2.0}
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rule": "majority"}, ValueError, "rule must be one of"),
        ({"votes": 0}, ValueError, "votes must be an int"),
        ({"criterion": "l1"}, ValueError, "criterion"),
        ({"rule": "weighted"}, ValueError, "needs weights"),
        ({"weights": {"a": -1.0}}, ValueError, "finite number >= 0"),
        ({"weights": [1.0, 2.0]}, TypeError, "dict"),
        ({"calibrate": "yes"}, TypeError, "calibrate"),
    ],
)
def test_bad_config_raises(kwargs, error, match):
    with pytest.raises(error, match=match):
        CUTConfig(**kwargs)


def test_resolve_config():
    assert resolve_config(None, {"rule": "any"}) == CUTConfig(rule="any")
    assert resolve_config({"votes": 1}, {}) == CUTConfig(votes=1)
    listed = resolve_config(None, {"rule": "weighted", "weights": [1, 3]}, tasks=["a", "b"])
    assert listed.weights == {"a": 1.0, "b": 3.0}
    with pytest.raises(TypeError, match="unknown CUT option"):
        resolve_config(None, {"rulle": "vote"})
    with pytest.raises(TypeError, match="not both"):
        resolve_config(CUTConfig(), {"rule": "any"})
    with pytest.raises(ValueError, match="3 entries for the 2 tasks"):
        resolve_config(None, {"rule": "weighted", "weights": [1, 2, 3]}, tasks=["a", "b"])
    with pytest.raises(ValueError, match="no entry for task"):
        CUTConfig(rule="weighted", weights={"a": 1.0}).task_weights(["a", "b"])


@pytest.mark.parametrize("granularity", ["channel", "weight"])
def test_cut_prune_weighted_with_a_list_of_weights(setup, granularity):
    model, batches, losses = setup
    x = example_input(model, 1)
    outputs = {}
    for weights in ([1.0, 2.0], [2.0, 1.0]):
        compact = atp.cut_prune(
            model, x, tasks=["a", "b"], losses=losses, data=batches, pruning_ratio=0.5,
            granularity=granularity, rule="weighted", weights=weights, progress=False,
        )  # fmt: skip
        record = read_record(compact)
        assert record is not None and record.config == CUTConfig(
            rule="weighted", weights={"a": weights[0], "b": weights[1]}
        )
        outputs[tuple(weights)] = compact.eval()(x)["a"]
    assert not torch.allclose(outputs[(1.0, 2.0)], outputs[(2.0, 1.0)])


def test_config_object_equals_keywords(setup):
    model, batches, losses = setup
    x = example_input(model, 1)
    common = dict(tasks=["a", "b"], losses=losses, data=batches, pruning_ratio=0.5, progress=False)
    by_config = atp.cut_prune(model, x, config=CUTConfig(rule="any", votes=1), **common)
    by_keywords = atp.cut_prune(model, x, rule="any", votes=1, **common)
    for name, value in by_config.state_dict().items():
        assert torch.equal(value, by_keywords.state_dict()[name])
    selected = select_tasks(model, ["a", "b"])
    scores = score_tasks(selected, batches, losses, tasks=["a", "b"], progress=False)
    a = cut_masks(selected, scores, pruning_ratio=0.6, config=CUTConfig(rule="all"))
    b = cut_masks(selected, scores, pruning_ratio=0.6, rule="all")
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_pruner_step_leaves_the_importance_keep_ratio_alone(setup):
    model, batches, losses = setup
    pruner = atp.CUTPruner(
        model, example_input(model, 1), tasks=["a", "b"], losses=losses, data=batches,
        pruning_ratio=0.6, iterative_steps=2, progress=False,
    )  # fmt: skip
    before = pruner.importance.keep_ratio
    for _ in range(2):
        pruner.step()
        assert pruner.importance.keep_ratio == before
    assert pruner.importance._step_keep_ratio is None


def test_registry_builds_cut_with_a_config(setup):
    model, batches, losses = setup
    for settings in (
        {"importance": "cut", "config": {"rule": "any", "votes": 1}},
        {"importance": "cut", "rule": "any", "votes": 1},
    ):
        importance = registry.build(settings, losses=losses)
        assert importance.config == CUTConfig(rule="any", votes=1)
    weighted = registry.build(
        {"importance": "cut", "rule": "weighted", "weights": [1, 2], "tasks": ["a", "b"]},
        losses=losses,
    )
    assert weighted.config.weights == {"a": 1.0, "b": 2.0}
