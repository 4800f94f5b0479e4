"""The metric CUTPruner hands NNI: its order is CUT's (vote) or DiSparse's (any) decision."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.nni.metrics import unit_metrics

SHAPE = {"w": (torch.Size([8]), 1)}
# Task a ranks blocks 0..7 best first, task b the reverse.
OPPOSED = {"a": {"w": torch.arange(8, 0, -1).float()}, "b": {"w": torch.arange(1, 9).float()}}
TOTALS = {"a": 36.0, "b": 36.0}


def kept(metric: torch.Tensor, count: int) -> set[int]:
    return set(torch.topk(metric.reshape(-1), count).indices.tolist())


def test_vote_keeps_what_both_tasks_keep_and_any_what_either_keeps():
    # Keeping 4 of 8: both tasks agree on the middle once each keeps its top 6;
    # either task keeps the ends once each keeps its top 2.
    vote = unit_metrics(OPPOSED, SHAPE, TOTALS, pruning_ratio=0.5, rule="vote", votes=2)["w"]
    any_ = unit_metrics(OPPOSED, SHAPE, TOTALS, pruning_ratio=0.5, rule="any", votes=2)["w"]
    assert kept(vote, 4) == {2, 3, 4, 5}
    assert kept(any_, 4) == {0, 1, 6, 7}


def test_votes_are_clipped_to_the_tasks_using_a_block():
    # One task: vote with votes=2 must still keep its own top half (CUT's code kept nothing).
    alone = {"a": OPPOSED["a"]}
    metric = unit_metrics(alone, SHAPE, TOTALS, pruning_ratio=0.5, rule="vote", votes=2)["w"]
    assert kept(metric, 4) == {0, 1, 2, 3}


def test_blocks_no_task_uses_rank_lowest():
    shapes = {"used": (torch.Size([4]), 1), "unused": (torch.Size([4]), 1)}
    blocks = {"a": {"used": torch.tensor([0.0, 0.0, 1.0, 2.0])}}
    metrics = unit_metrics(blocks, shapes, {"a": 3.0}, pruning_ratio=0.5, rule="any", votes=2)
    assert metrics["unused"].max() < metrics["used"].min()


@pytest.mark.parametrize("rule", ["mean", "max", "weighted"])
def test_score_rules_rank_by_the_fused_normalised_score(rule):
    blocks = {
        "a": {"w": torch.tensor([4.0, 0.0, 0.0, 0.0])},
        "b": {"w": torch.tensor([0.0, 1.0, 2.0, 1.0])},
    }
    weights = {"a": 0.0, "b": 1.0}
    metric = unit_metrics(
        blocks, {"w": (torch.Size([4]), 1)}, {"a": 4.0, "b": 4.0}, pruning_ratio=0.5, rule=rule, votes=2,
        weights=weights,
    )["w"]  # fmt: skip
    expected_top = {"mean": 0, "max": 0, "weighted": 2}[rule]
    assert int(metric.argmax()) == expected_top


@settings(max_examples=40, deadline=None)
@given(
    blocks=st.integers(2, 40),
    tasks=st.integers(1, 4),
    ratio=st.floats(0.0, 0.95),
    rule=st.sampled_from(["vote", "any", "all", "mean"]),
    seed=st.integers(0, 2**16),
)
def test_metric_is_a_strict_order_of_every_block(blocks, tasks, ratio, rule, seed):
    generator = torch.Generator().manual_seed(seed)
    scores = {f"t{i}": {"w": torch.rand(blocks, generator=generator)} for i in range(tasks)}
    totals = {t: float(s["w"].sum()) for t, s in scores.items()}
    metric = unit_metrics(
        scores, {"w": (torch.Size([blocks]), 1)}, totals, pruning_ratio=ratio, rule=rule, votes=2
    )["w"]
    assert metric.shape == (blocks,)
    assert torch.unique(metric).numel() == blocks  # NNI's thresholds then mask exact counts
    assert float(metric.min()) > 0 and float(metric.max()) == 1.0
