"""The selection-based calibration (issue 14, goal 2) gives the masks of the literal search.

``literal_cut_masks`` is cut_masks as the paper's rule plus the calibration states it:
v_t = h_t / Σ h_t, and at every bisection step every task ranks all its weights again
(a stable descending sort, ties by position) and keeps its top round(f·count); a weight
is kept when at least min(votes, #users) of its users keep it. The fast path (one key
array per task, lazy quickselect, one vote count following the fractions visited; numpy
on CPU, torch elsewhere) must give exactly these masks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import cut_plugin.verdicts as verdicts
from cut_plugin import cut_masks, mask_sparsity
from cut_plugin.fusion import fuse_blocks
from tests.test_masks_speed import reference_cut_masks

SETTINGS = settings(max_examples=40, deadline=None)


def literal_verdict(values, used, *, rule, votes, keep, calibrate, grain=None) -> Tensor:
    """The fused verdict, re-ranking every task's blocks at every bisection step."""
    users = used.sum(dim=0)
    needed = {"any": torch.ones_like(users), "all": users}.get(rule, users.clamp(max=votes))
    sizes = torch.ones(values.shape[1], dtype=torch.float64) if grain is None else grain.double()
    total = max(float(sizes[users > 0].sum()), 1.0)

    def kept_at(fraction: float) -> Tensor:
        count = torch.zeros(values.shape[1], dtype=torch.long)
        for t in range(values.shape[0]):
            index = used[t].nonzero().flatten()
            order = torch.argsort(values[t, index], descending=True, stable=True)
            top = round(fraction * index.numel())
            count[index[order[:top]]] += 1
        return (count >= needed) & (users > 0)

    def share(kept: Tensor) -> float:
        return float(sizes[kept].sum()) / total

    best = kept_at(keep)
    best_error = abs(share(best) - keep)
    low, high = 0.0, 1.0
    for _ in range(40 if calibrate else 0):
        if best_error <= 1e-3:
            break
        middle = (low + high) / 2
        kept = kept_at(middle)
        if abs(share(kept) - keep) < best_error:
            best, best_error = kept, abs(share(kept) - keep)
        low, high = (middle, high) if share(kept) < keep else (low, middle)
    return best


class Shared(nn.Module):
    """A trunk every task uses, a layer only some use, one-element layers and three heads."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Conv2d(3, 6, 3)
        self.tiny = nn.Conv2d(1, 1, 1)  # one element
        self.middle = nn.Linear(6, 5)
        self.heads = nn.ModuleDict({t: nn.Linear(5, 2) for t in ("a", "b", "c")})
        self.one = nn.Linear(1, 1)  # one element, task c only


USES = {
    "a": ["trunk.weight", "tiny.weight", "middle.weight", "heads.a.weight"],
    "b": ["trunk.weight", "tiny.weight", "middle.weight", "heads.b.weight"],
    "c": ["trunk.weight", "heads.c.weight", "one.weight"],  # skips tiny and middle
}


def random_scores(model: nn.Module, seed: int, levels: int, tasks: list[str]) -> dict:
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {
        t: {n: torch.randint(0, levels, params[n].shape, generator=g).float() for n in USES[t]}
        for t in tasks
    }


def literal_cut_masks(model: nn.Module, scores: dict, ratio: float, **options) -> dict:
    """``cut_masks`` on the literal re-ranking kernel."""
    return reference_cut_masks(model, scores, ratio, kernel=literal_verdict, **options)


def verdict(values: Tensor, used: Tensor, **options) -> Tensor:
    kept, _ = fuse_blocks(values, used, **options)
    assert kept is not None
    return kept


def assert_same(masks: dict, expected: dict) -> None:
    assert masks.keys() == expected.keys()
    for name in masks:
        assert masks[name].dtype == torch.bool
        assert torch.equal(masks[name], expected[name]), name


@SETTINGS
@given(
    st.integers(0, 2**31 - 1),
    st.sampled_from(["vote", "any", "all", "mean", "max", "weighted"]),
    st.integers(1, 3),
    st.floats(0.0, 0.99),
    st.booleans(),
    st.sampled_from([1, 2, 3, 1000]),  # 1: every score ties
    st.sampled_from([["a", "b", "c"], ["a", "c"], ["b"]]),
)
def test_cut_masks_equal_the_literal_search(seed, rule, votes, ratio, calibrate, levels, tasks):
    model = Shared()
    scores = random_scores(model, seed, levels, tasks)
    options = {"rule": rule, "votes": votes, "calibrate": calibrate}
    if rule == "weighted":
        options["weights"] = {"a": 0.5, "b": 2.0, "c": 1.0}
    expected = literal_cut_masks(model, scores, ratio, **options)
    assert_same(cut_masks(model, scores, pruning_ratio=ratio, **options), expected)


@st.composite
def blocks(draw):
    tasks = draw(st.integers(1, 5))
    size = draw(st.sampled_from([1, 2, 3, 50, 300]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    levels = draw(st.sampled_from([1, 2, 7, 0]))  # 0: continuous
    if levels:
        values = torch.randint(0, levels, (tasks, size), generator=g).float() / levels
    else:
        values = torch.rand(tasks, size, generator=g)
    if draw(st.booleans()):
        values = values - 0.5  # negative scores, -0.0 against 0.0
        zeros = values == 0
        signs = torch.rand(int(zeros.sum()), generator=g) < 0.5
        values[zeros] = torch.where(signs, -0.0, 0.0)
    used = torch.rand(tasks, size, generator=g) < draw(st.sampled_from([0.2, 0.7, 1.0]))
    grain = torch.randint(1, 9, (size,), generator=g) if draw(st.booleans()) else None
    return values, used, grain


@SETTINGS
@given(blocks(), st.sampled_from(["vote", "any", "all"]), st.integers(1, 5), st.floats(0, 1))
def test_kernel_equals_the_literal_search_on_every_path(case, rule, votes, keep):
    """numpy keys (CPU float32), the sort path (float64), the torch path (other devices)."""
    values, used, grain = case
    expected = literal_verdict(
        values, used, rule=rule, votes=votes, keep=keep, calibrate=True, grain=grain
    )
    options = {"rule": rule, "votes": votes, "keep": keep, "calibrate": True, "grain": grain}
    assert torch.equal(verdict(values, used, **options), expected)
    assert torch.equal(verdict(values.double(), used, **options), expected)
    on_numpy = verdicts._on_numpy
    verdicts._on_numpy = lambda device: False  # type: ignore[assignment]
    try:
        assert torch.equal(verdict(values, used, **options), expected)
    finally:
        verdicts._on_numpy = on_numpy


def test_parallel_tasks_give_the_same_verdict():
    g = torch.Generator().manual_seed(3)
    values = torch.randint(0, 40, (4, 5000), generator=g).float()
    used = torch.rand(4, 5000, generator=g) < 0.8
    expected = literal_verdict(values, used, rule="vote", votes=2, keep=0.4, calibrate=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        kept = verdict(values, used, rule="vote", votes=2, keep=0.4, calibrate=True)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(kept, expected)


def test_keys_rank_like_a_stable_descending_sort():
    row = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 3.0, -2.0, 3.0, float("inf"), -1e38, 0.0])
    used = torch.ones(row.numel(), dtype=torch.bool)
    used[2] = False
    scratch = verdicts._Scratch(row.numel(), np.arange(row.numel()))
    order = verdicts.TaskOrder(row, used, scratch)
    index = used.nonzero().flatten()
    expected = index[torch.argsort(row[index], descending=True, stable=True)]
    for top in range(index.numel() + 1):
        order.place(top)
        assert sorted(order.blocks(0, top).tolist()) == sorted(expected[:top].tolist())


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([3, 50, 3000]), st.sampled_from([2, 0]))
def test_places_in_any_order_keep_every_segment_exact(seed, size, levels):
    g = torch.Generator().manual_seed(seed)
    row = torch.randint(0, levels, (size,), generator=g).float() if levels else torch.rand(size)
    used = torch.rand(size, generator=g) < 0.9
    order = verdicts.TaskOrder(row, used, verdicts._Scratch(size, np.arange(size)))
    index = used.nonzero().flatten()
    ranked = index[torch.argsort(row[index], descending=True, stable=True)].tolist()
    known = [0, order.count]
    for rank in torch.randint(0, order.count + 1, (30,), generator=g).tolist():
        order.place(rank)
        known = sorted({*known, rank})
        for start, stop in zip(known, known[1:], strict=False):
            assert sorted(order.blocks(start, stop).tolist()) == sorted(ranked[start:stop])


@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.8])
def test_calibrated_share_is_one_minus_the_ratio(ratio):
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    weights = {n: p for n, p in model.named_parameters() if n.endswith("weight")}
    g = torch.Generator().manual_seed(0)
    scores = {t: {n: torch.rand(p.shape, generator=g) for n, p in weights.items()} for t in "abc"}
    masks = cut_masks(model, scores, pruning_ratio=ratio, votes=2)
    assert abs(mask_sparsity(masks) - ratio) <= 1e-3
    assert_same(masks, literal_cut_masks(model, scores, ratio, votes=2))


def test_scores_that_overflow_their_sum_are_finite_and_fine():
    model = Shared()
    params = dict(model.named_parameters())
    scores = {t: {n: torch.full(params[n].shape, 3e38) for n in USES[t]} for t in ("a", "b")}
    assert_same(cut_masks(model, scores, pruning_ratio=0.5), literal_cut_masks(model, scores, 0.5))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_scores_are_named(bad):
    model = Shared()
    scores = random_scores(model, 0, 5, ["a", "b"])
    scores["b"]["middle.weight"][0, 0] = bad
    with pytest.raises(ValueError, match=r"task_scores\['b'\]\['middle.weight'\] holds NaN or inf"):
        cut_masks(model, scores, pruning_ratio=0.5)


def test_empty_and_unused_blocks():
    values, used = torch.rand(2, 0), torch.zeros(2, 0, dtype=torch.bool)
    assert verdict(values, used, keep=0.5, calibrate=True).shape == (0,)
    values, used = torch.rand(2, 4), torch.zeros(2, 4, dtype=torch.bool)
    used[0, 1] = True
    kept = verdict(values, used, votes=2, keep=1.0, calibrate=True)
    assert kept.tolist() == [False, True, False, False]  # a block nobody uses is never kept
