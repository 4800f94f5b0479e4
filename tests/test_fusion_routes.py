"""The three CUT routes (unstructured masks, Torch-Pruning channels, NNI metrics) agree.

One kernel (``cut_plugin.fusion.fuse_blocks``) decides for every route; here the same
per-task scores go through each route and must give the same verdicts, for every rule.
The layer is ``Linear(1, C)``, so one weight element is one output channel and the
element-level route (``cut_masks``) sees exactly the channel-level problem.
"""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import adapters.torch_pruning as atp
from cut_plugin import CUTConfig, cut_masks
from cut_plugin.fusion import RULES, fuse_blocks

CHANNELS = 12
TASKS = ["a", "b", "c"]


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, CHANNELS, bias=False)
        self.heads = nn.ModuleDict({t: nn.Linear(CHANNELS, 2, bias=False) for t in TASKS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.fc(x)
        return {t: head(h) for t, head in self.heads.items()}


def _config(rule: str) -> CUTConfig:
    weights = {"a": 1.0, "b": 2.5, "c": 0.5} if rule == "weighted" else None
    return CUTConfig(rule=rule, votes=2, weights=weights)  # type: ignore[arg-type]


def _top(order: torch.Tensor, keep: int) -> torch.Tensor:
    kept = torch.zeros(order.numel(), dtype=torch.bool)
    kept[torch.argsort(order, descending=True, stable=True)[:keep]] = True
    return kept


def _routes(scores: dict[str, torch.Tensor], config: CUTConfig, ratio: float) -> dict:
    model = Shared()
    keep = round((1 - ratio) * CHANNELS)
    # Unstructured: only fc.weight is scored, so it is the only weight masked.
    masks = cut_masks(
        model, {t: {"fc.weight": s[:, None]} for t, s in scores.items()},
        pruning_ratio=ratio, config=config,
    )  # fmt: skip
    # Torch-Pruning: the group of fc's output channels; the heads' columns score 0.
    importance = atp.CUTImportance(
        {t: nn.functional.cross_entropy for t in TASKS}, tasks=TASKS, config=config,
        keep_ratio=1 - ratio,
    )  # fmt: skip
    importance.scores = {
        t: {
            "fc.weight": s[:, None],
            **{f"heads.{u}.weight": torch.zeros(2, CHANNELS) for u in TASKS},
        }
        for t, s in scores.items()
    }
    importance._bind(model)
    graph = tp.DependencyGraph().build_dependency(model, (torch.randn(1, 1),))
    group = graph.get_pruning_group(model.fc, tp.prune_linear_out_channels, list(range(CHANNELS)))
    channel = importance(group)
    # NNI: one output-channel metric block per channel.
    from adapters.nni.metrics import unit_metrics

    metric = unit_metrics(
        {t: {"fc": s} for t, s in scores.items()}, {"fc": (torch.Size([CHANNELS]), 1)},
        {t: float(s.sum()) for t, s in scores.items()}, pruning_ratio=ratio, rule=config.rule,
        votes=config.votes, weights=config.weights, calibrate=config.calibrate,
    )["fc"]  # fmt: skip
    values = torch.stack([scores[t] / scores[t].sum() for t in TASKS])
    kept, fused = fuse_blocks(
        values, rule=config.rule, votes=config.votes, keep=1 - ratio, calibrate=True,
        weights=config.task_weights(TASKS),
    )  # fmt: skip
    # A verdict may keep a count near, not at, the target (the tasks' keep counts are
    # whole numbers); every route must then keep that same verdict.
    reference = kept if kept is not None else _top(fused, keep)
    count = int(reference.sum())
    return {
        "kernel": reference,
        "cut_masks": masks["fc.weight"].reshape(-1),
        "torch_pruning": channel >= 2 if kept is not None else _top(channel, count),
        "nni": _top(metric, count),
    }


@pytest.mark.parametrize("rule", RULES)
@settings(max_examples=15, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), ratio=st.sampled_from([0.25, 0.5, 0.75]))
def test_every_route_gives_the_same_verdicts(rule, seed, ratio):
    g = torch.Generator().manual_seed(seed)
    scores = {t: torch.rand(CHANNELS, generator=g) * (i + 1) for i, t in enumerate(TASKS)}
    verdicts = _routes(scores, _config(rule), ratio)
    reference = verdicts.pop("kernel")
    assert abs(int(reference.sum()) - round((1 - ratio) * CHANNELS)) <= 2
    for route, kept in verdicts.items():
        assert torch.equal(kept, reference), (route, kept.tolist(), reference.tolist())


def test_rules_differ_on_the_same_scores():
    g = torch.Generator().manual_seed(3)
    scores = {t: torch.rand(CHANNELS, generator=g) ** 3 for t in TASKS}
    kept = {rule: _routes(scores, _config(rule), 0.5)["kernel"] for rule in RULES}
    assert len({tuple(v.tolist()) for v in kept.values()}) > 2  # the rule is a real lever
