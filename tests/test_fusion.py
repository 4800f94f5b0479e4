"""fuse: the rules' algebra, as properties over random scores."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cut_plugin import fuse

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def task_verdicts(draw, min_tasks=1, max_tasks=5):
    tasks = draw(st.integers(min_tasks, max_tasks))
    size = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    return {f"t{i}": torch.rand(size, generator=g) > 0.5 for i in range(tasks)}


@st.composite
def task_scores(draw, min_tasks=1, max_tasks=5):
    tasks = draw(st.integers(min_tasks, max_tasks))
    shape = draw(st.sampled_from([(7,), (3, 4), (2, 3, 2)]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    return {f"t{i}": torch.rand(shape, generator=g) + 1e-3 for i in range(tasks)}


@SETTINGS
@given(task_verdicts(max_tasks=1), st.sampled_from(["vote", "any", "all"]))
def test_fusing_one_task_returns_its_verdict(verdicts, rule):
    (mask,) = verdicts.values()
    assert torch.equal(fuse(verdicts, rule=rule, votes=2), mask)


@SETTINGS
@given(task_scores(max_tasks=1), st.sampled_from(["mean", "max", "weighted"]))
def test_fusing_one_task_returns_its_normalised_scores(scores, rule):
    (value,) = scores.values()
    fused = fuse(scores, rule=rule, weights={"t0": 1.0})
    torch.testing.assert_close(fused, value / value.sum())


@SETTINGS
@given(task_verdicts())
def test_vote_one_is_any_and_vote_all_is_all(verdicts):
    assert torch.equal(fuse(verdicts, rule="vote", votes=1), fuse(verdicts, rule="any"))
    assert torch.equal(fuse(verdicts, rule="vote", votes=len(verdicts)), fuse(verdicts, rule="all"))
    assert torch.equal(
        fuse(verdicts, rule="vote", votes=len(verdicts) + 3), fuse(verdicts, rule="all")
    )


@SETTINGS
@given(
    task_scores(min_tasks=2), st.sampled_from(["vote", "any", "all", "mean", "max"]), st.randoms()
)
def test_symmetric_rules_ignore_task_order(scores, rule, rng):
    names = list(scores)
    rng.shuffle(names)
    shuffled = {n: scores[n] for n in names}
    keep = 0.5 if rule in ("vote", "any", "all") else None
    a = fuse(scores, rule=rule, keep_ratio=keep)
    b = fuse(shuffled, rule=rule, keep_ratio=keep)
    assert torch.equal(a, b) if a.dtype == torch.bool else torch.allclose(a, b)


@SETTINGS
@given(task_verdicts(), st.integers(1, 6))
def test_vote_never_keeps_what_no_task_keeps_and_is_monotone(verdicts, votes):
    union = torch.stack(list(verdicts.values())).any(0)
    fused = fuse(verdicts, rule="vote", votes=votes)
    assert not (fused & ~union).any()
    looser = fuse(verdicts, rule="vote", votes=max(1, votes - 1))
    assert not (fused & ~looser).any()


@SETTINGS
@given(task_scores(min_tasks=2), st.floats(0.1, 0.9))
def test_keep_ratio_keeps_exact_count_for_score_rules(scores, keep):
    fused = fuse(scores, rule="mean", keep_ratio=keep)
    numel = next(iter(scores.values())).numel()
    assert int(fused.sum()) == round(keep * numel)


def test_rules_differ_on_disagreeing_tasks():
    scores = {"a": torch.tensor([4.0, 3.0, 1.0, 0.5]), "b": torch.tensor([0.5, 3.0, 1.0, 4.0])}
    assert fuse(scores, rule="vote", keep_ratio=0.5).tolist() == [False, True, False, False]
    assert fuse(scores, rule="any", keep_ratio=0.5).tolist() == [True, True, False, True]


def test_bad_inputs_raise_with_choices():
    s = {"a": torch.rand(3)}
    with pytest.raises(ValueError, match="rule must be one of"):
        fuse(s, rule="majority")
    with pytest.raises(ValueError, match="votes"):
        fuse(s, votes=0)
    with pytest.raises(ValueError, match="keep_ratio"):
        fuse(s)  # vote on float scores needs keep_ratio
    with pytest.raises(ValueError, match="shape"):
        fuse({"a": torch.rand(3), "b": torch.rand(4)}, keep_ratio=0.5)
    with pytest.raises(ValueError, match="weights"):
        fuse(s, rule="weighted")
    with pytest.raises(ValueError, match="empty"):
        fuse({})
