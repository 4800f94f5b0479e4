"""The fast calibration gives the same masks as the re-ranking bisection it replaced.

``reference_fuse_verdict`` is a literal port of ``fuse_blocks``' verdict path before
the sort-once search (issue 14, goal 2): rank every task once, then at every
bisection step count each block's keep-verdicts at that fraction. The fast kernel
must return identical verdicts on random scores with many ties, random users,
every verdict rule, vote thresholds, grains, and through ``cut_masks`` for every rule.
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from cut_plugin import cut_masks
from cut_plugin.fusion import fuse_blocks, top_mask

SETTINGS = settings(max_examples=50, deadline=None)


def reference_fuse_verdict(
    values: Tensor,
    used: Tensor,
    *,
    rule: str,
    votes: int,
    keep: float,
    calibrate: bool,
    grain: Tensor | None = None,
) -> Tensor:
    """The verdict of ``fuse_blocks`` as it was: ranks once, then re-counts at every step."""
    users = used.sum(dim=0)
    if rule == "any":
        needed = torch.ones_like(users)
    elif rule == "all":
        needed = users
    else:
        needed = users.clamp(max=votes)
    num_blocks = values.shape[1]
    ranks = torch.full(values.shape, num_blocks, dtype=torch.long)
    for t in range(values.shape[0]):
        index = used[t].nonzero().flatten()
        order = torch.argsort(values[t, index], descending=True, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel())
        ranks[t, index] = rank
    counts = used.sum(dim=1).to(torch.float64)
    sizes = torch.ones(num_blocks, dtype=torch.float64) if grain is None else grain.double()
    total = float(sizes[users > 0].sum())

    def kept_for(fraction: float) -> Tensor:
        limit = torch.round(fraction * counts).long()[:, None]
        return ((ranks < limit).sum(dim=0) >= needed) & (users > 0)

    def kept_fraction(kept: Tensor) -> float:
        return float(sizes[kept].sum()) / max(total, 1.0)

    best = kept_for(keep)
    best_error = abs(kept_fraction(best) - keep)
    low, high = 0.0, 1.0
    for _ in range(40 if calibrate else 0):
        if best_error <= 1e-3:
            break
        middle = (low + high) / 2
        kept = kept_for(middle)
        fraction = kept_fraction(kept)
        if abs(fraction - keep) < best_error:
            best, best_error = kept, abs(fraction - keep)
        low, high = (middle, high) if fraction < keep else (low, middle)
    return best


@st.composite
def blocks(draw):
    tasks = draw(st.sampled_from([1, 2, 3, 4, 5, 10]))  # 10: the sort fallback for many tasks
    size = draw(st.integers(1, 400))
    levels = draw(st.sampled_from([2, 5, 50, 0]))  # 0: continuous values, else many ties
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    if levels:
        values = torch.randint(0, levels, (tasks, size), generator=g).float() / levels
    else:
        values = torch.rand(tasks, size, generator=g)
    if draw(st.booleans()):
        values = values - 0.3  # negative values and -0.0 / 0.0 ties
    used = torch.rand(tasks, size, generator=g) < draw(st.sampled_from([0.3, 0.8, 1.0]))
    grain = torch.randint(1, 10, (size,), generator=g) if draw(st.booleans()) else None
    return values, used, grain


@SETTINGS
@given(
    blocks(),
    st.sampled_from(["vote", "any", "all"]),
    st.integers(1, 4),
    st.floats(0.0, 1.0),
    st.booleans(),
)
def test_fast_calibration_matches_reranking(case, rule, votes, keep, calibrate):
    values, used, grain = case
    expected = reference_fuse_verdict(
        values, used, rule=rule, votes=votes, keep=keep, calibrate=calibrate, grain=grain
    )
    kept, _ = fuse_blocks(
        values, used, rule=rule, votes=votes, keep=keep, calibrate=calibrate, grain=grain
    )
    assert kept is not None
    assert torch.equal(kept, expected)


@SETTINGS
@given(blocks(), st.floats(0.0, 1.0))
def test_fast_calibration_matches_in_float64(case, keep):
    values, used, grain = case
    values = values.double() / 7.0
    expected = reference_fuse_verdict(
        values, used, rule="vote", votes=2, keep=keep, calibrate=True, grain=grain
    )
    kept, _ = fuse_blocks(
        values, used, rule="vote", votes=2, keep=keep, calibrate=True, grain=grain
    )
    assert torch.equal(kept, expected)


class ThreeHeads(nn.Module):
    """A shared conv trunk and three conv heads (the shape of an ASPP multi-task model)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
        self.heads = nn.ModuleDict({t: nn.Conv2d(8, 2, 1) for t in ("a", "b", "c")})


def reference_cut_masks(
    model: nn.Module,
    scores: dict[str, dict[str, Tensor]],
    ratio: float,
    *,
    kernel: Any = None,
    **options,
) -> dict[str, Tensor]:
    """``cut_masks`` as it was, on a reference verdict ``kernel`` (default: the old port's;
    score rules: fused top fraction)."""
    kernel = reference_fuse_verdict if kernel is None else kernel
    weights = {n: p for n, p in model.named_parameters() if n.endswith("weight")}
    tasks = list(scores)
    used_names = [n for n in weights if any(n in s for s in scores.values())]
    sizes = [weights[n].numel() for n in used_names]
    values = torch.zeros(len(tasks), sum(sizes))
    uses = torch.zeros(len(tasks), sum(sizes), dtype=torch.bool)
    offsets = [0, *torch.tensor(sizes).cumsum(0).tolist()]
    for row, task in enumerate(tasks):
        total = sum(float(v.sum()) for v in scores[task].values()) or 1.0
        for i, name in enumerate(used_names):
            if name in scores[task]:
                values[row, offsets[i] : offsets[i + 1]] = scores[task][name].reshape(-1) / total
                uses[row, offsets[i] : offsets[i + 1]] = True
    rule = options.get("rule", "vote")
    if rule in ("vote", "any", "all"):
        kept = kernel(
            values,
            uses,
            rule=rule,
            votes=options.get("votes", 2),
            keep=1.0 - ratio,
            calibrate=options.get("calibrate", True),
        )
    else:
        weights_row = [options.get("weights", {}).get(t, 1.0) for t in tasks]
        _, fused = fuse_blocks(values, uses, rule=rule, weights=weights_row)
        kept = top_mask(fused, 1.0 - ratio)
    return {
        n: m.reshape(weights[n].shape) for n, m in zip(used_names, kept.split(sizes), strict=True)
    }


@SETTINGS
@given(
    st.integers(0, 2**31 - 1),
    st.sampled_from(["vote", "any", "all", "mean", "max", "weighted"]),
    st.integers(1, 3),
    st.sampled_from([0.1, 0.3, 0.5, 0.77, 0.9]),
    st.booleans(),
    st.sampled_from([2, 3, 1000]),
)
def test_cut_masks_unchanged_on_random_score_dicts(seed, rule, votes, ratio, calibrate, levels):
    g = torch.Generator().manual_seed(seed)
    model = ThreeHeads()
    trunk = [n for n, p in model.named_parameters() if n.startswith("trunk") and p.dim() > 1]
    scores = {}
    for task in ("a", "b", "c"):
        names = [*trunk, f"heads.{task}.weight"]
        if task == "c":
            names = names[1:]  # a task that does not reach the first conv
        params = dict(model.named_parameters())
        scores[task] = {
            n: torch.randint(0, levels, params[n].shape, generator=g).float() for n in names
        }
    options = {"rule": rule, "votes": votes, "calibrate": calibrate}
    if rule == "weighted":
        options["weights"] = {"a": 0.5, "b": 2.0, "c": 1.0}
    masks = cut_masks(model, scores, pruning_ratio=ratio, **options)
    expected = reference_cut_masks(model, scores, ratio, **options)
    assert masks.keys() == expected.keys()
    for name in masks:
        assert torch.equal(masks[name], expected[name]), name
