"""``round_to``: every pruned layer keeps a multiple of it; the default keeps exact counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import adapters.torch_pruning as atp
from tests.toy_models import ResidualNet, example_input, losses_for, make_batches


def _widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _prune(ratio: float, **options) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = ResidualNet(width=10)
    compact = atp.cut_prune(
        model, example_input(model), tasks=["a", "b"], losses=losses_for(model),
        data=make_batches(model, 2), pruning_ratio=ratio, progress=False, **options,
    )  # fmt: skip
    return model, compact


def test_round_to_keeps_multiples_and_the_default_exact_counts() -> None:
    dense, exact = _prune(0.3)
    _, rounded = _prune(0.3, round_to=8)
    before, widths, kept = _widths(dense), _widths(exact), _widths(rounded)
    pruned = [n for n in widths if widths[n] < before[n]]
    assert pruned, "nothing was pruned: the test would prove nothing"
    assert any(widths[n] % 8 for n in pruned)  # exact counts (10 → 7, 20 → 14): not multiples
    for name, width in kept.items():
        assert width == before[name] or width % 8 == 0, (name, before[name], width)
    assert kept != widths
    x = example_input(dense)
    assert {t: o.shape for t, o in rounded(x).items()} == {t: o.shape for t, o in exact(x).items()}


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"round_to": 0}, ValueError, "round_to must be >= 1"),
        ({"round_to": 2.5}, TypeError, "positive int"),
        ({"round_to": True}, TypeError, "positive int"),
        ({"round_to": 8, "granularity": "weight"}, TypeError, "granularity='channel' only"),
    ],
)
def test_bad_round_to_raises_naming_it(options: dict, error: type, message: str) -> None:
    model = ResidualNet(width=4)
    with pytest.raises(error, match=message):
        atp.cut_prune(
            model, example_input(model), tasks=["a"], losses={"a": losses_for(model)["a"]},
            data=make_batches(model, 1), pruning_ratio=0.3, progress=False, **options,
        )  # fmt: skip
