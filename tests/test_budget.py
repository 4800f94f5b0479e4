"""MAC budgets: ``cut_prune(target_macs=...)`` fits the budget, ``search_ratio`` finds the least pruning.

Also: a pruner given earlier scores (``CUTPruner(scores=...)``) prunes exactly as one
that scores the data itself.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import adapters.torch_pruning as atp
from adapters.torch_pruning.budget import check_target_macs, macs_budget
from cut_plugin import score_tasks, select_tasks
from tests.toy_models import (
    ResidualNet,
    example_input,
    losses_for,
    make_batches,
    same_state,
    state_snapshot,
)


def _setup():
    torch.manual_seed(0)
    model = ResidualNet(width=8)
    return model, example_input(model), losses_for(model), make_batches(model, 2)


def _macs(model, x) -> int:
    return atp.count_macs(model, (x,))[0]


@pytest.mark.parametrize(("fraction", "global_pruning"), [(0.6, False), (0.3, True)])
def test_target_macs_fits_the_budget_closely(fraction, global_pruning):
    model, x, losses, data = _setup()
    before = state_snapshot(model)
    dense = _macs(select_tasks(model, ["a", "b"]), x)
    compact = atp.cut_prune(
        model, (x,), tasks=["a", "b"], losses=losses, data=data, target_macs=fraction,
        global_pruning=global_pruning, progress=False,
    )  # fmt: skip
    macs = _macs(compact, x)
    assert macs <= fraction * dense
    # The least pruning that fits: a little more MACs would not fit, far fewer is not asked.
    assert macs >= (fraction - 0.08) * dense, (macs / dense, fraction)
    assert same_state(model, before)  # the caller's model is untouched
    full = model(x)
    assert {t: o.shape for t, o in compact(x).items()} == {t: full[t].shape for t in ("a", "b")}


def test_target_macs_as_a_count_and_for_one_task():
    model, x, losses, data = _setup()
    dense = _macs(select_tasks(model, ["a"]), x)
    compact = atp.cut_prune(
        model, (x,), tasks=["a"], losses=losses, data=data, target_macs=int(dense * 0.5),
        progress=False,
    )  # fmt: skip
    assert _macs(compact, x) <= dense * 0.5
    assert set(compact(x)) == {"a"}


def test_a_budget_above_the_dense_macs_prunes_nothing():
    model, x, losses, data = _setup()
    compact = atp.cut_prune(model, (x,), tasks=["a", "b"], losses=losses, data=data,
                            target_macs=1.0, progress=False)  # fmt: skip
    expected = model(x)
    for task, output in compact(x).items():
        torch.testing.assert_close(output, expected[task])


def test_an_unreachable_budget_says_the_smallest_reachable():
    model, x, losses, data = _setup()
    with pytest.raises(ValueError, match="cannot be reached.*Ask for at least"):
        atp.cut_prune(model, (x,), tasks=["a", "b"], losses=losses, data=data,
                      target_macs=1e-6, progress=False)  # fmt: skip


@pytest.mark.parametrize(
    ("value", "error"),
    [(0.0, ValueError), (1.5, ValueError), (-3, ValueError), (True, TypeError), ("1e6", TypeError)],
)
def test_bad_target_macs_raise(value, error):
    with pytest.raises(error, match="target_macs"):
        check_target_macs(value)


def test_ratio_and_budget_are_exclusive_and_budget_is_for_channels():
    model, x, losses, data = _setup()
    common = {"tasks": ["a", "b"], "losses": losses, "data": data, "progress": False}
    with pytest.raises(TypeError, match="exactly one of pruning_ratio"):
        atp.cut_prune(model, (x,), pruning_ratio=0.5, target_macs=0.5, **common)
    with pytest.raises(TypeError, match="exactly one of pruning_ratio"):
        atp.cut_prune(model, (x,), **common)
    with pytest.raises(TypeError, match="granularity='channel' only"):
        atp.cut_prune(model, (x,), target_macs=0.5, granularity="weight", **common)


def test_macs_budget():
    assert macs_budget(0.25, 1000) == 250
    assert macs_budget(300, 1000) == 300


def test_search_ratio_keeps_the_least_pruned_fitting_model():
    tried = []

    def prune(ratio: float) -> nn.Module:
        tried.append(ratio)
        return nn.Linear(1, max(1, round(100 * (1 - ratio))))

    model, ratio, macs = atp.search_ratio(prune, lambda m: m.out_features, 40)
    assert macs <= 40 and macs >= 39 and model.out_features == macs
    assert 0.59 <= ratio <= 0.62
    assert len(tried) <= 14


def test_given_scores_prune_as_scoring_does():
    model, x, losses, data = _setup()
    common = {"tasks": ["a", "b"], "losses": losses, "data": data, "pruning_ratio": 0.5,
              "progress": False}  # fmt: skip
    scored = atp.CUTPruner(model, (x,), **common)
    scores = score_tasks(select_tasks(model, ["a", "b"]), data, losses, progress=False)
    given = atp.CUTPruner(model, (x,), scores=scores, **common)
    scored.step()
    given.step()
    for task, output in given.model(x).items():
        torch.testing.assert_close(output, scored.model(x)[task])
    assert [p.shape for p in given.model.parameters()] == [
        p.shape for p in scored.model.parameters()
    ]


def test_scores_of_another_model_raise():
    model, x, losses, data = _setup()
    other = ResidualNet(width=6)
    scores = score_tasks(other, make_batches(other, 1), losses_for(other), progress=False)
    with pytest.raises(ValueError, match="does not match this model's parameter"):
        atp.CUTPruner(model, (x,), tasks=["a", "b"], losses=losses, data=data, scores=scores,
                      pruning_ratio=0.5, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="an entry for every task"):
        atp.CUTPruner(model, (x,), tasks=["a", "b"], losses=losses, data=data,
                      scores={"a": scores["a"]}, pruning_ratio=0.5, progress=False)  # fmt: skip
