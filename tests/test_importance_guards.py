"""CUTImportance inside a user's own Torch-Pruning pruner: output layers and stale scores."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import Tensor, nn

import adapters.torch_pruning as atp

LOSSES = {"a": F.cross_entropy, "b": F.cross_entropy}


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.heads = nn.ModuleDict({"a": nn.Linear(16, 10), "b": nn.Linear(16, 2)})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.trunk(x)
        return {name: head(h) for name, head in self.heads.items()}


def _setup() -> tuple[nn.Module, Tensor, list[tuple[Tensor, dict[str, Tensor]]]]:
    torch.manual_seed(0)
    x = torch.randn(6, 8)
    data = [(x, {"a": torch.randint(0, 10, (6,)), "b": torch.randint(0, 2, (6,))})]
    return TwoHeads(), x, data


def _pruner(model: nn.Module, x: Tensor, importance: atp.CUTImportance, **kw: object) -> object:
    return tp.pruner.BasePruner(model, x, importance, pruning_ratio=0.5, **kw)


def test_a_group_that_prunes_a_task_output_raises() -> None:
    model, x, data = _setup()
    importance = atp.CUTImportance(LOSSES, progress=False)
    importance.estimate(model, data)
    pruner = _pruner(model, x, importance)
    with pytest.raises(ValueError, match=r"output layer of task 'a'.*output_layers") as info:
        pruner.step()  # type: ignore[attr-defined]
    assert "ignored_layers" in str(info.value)


def test_ignoring_the_output_layers_keeps_their_width() -> None:
    model, x, data = _setup()
    importance = atp.CUTImportance(LOSSES, progress=False)
    importance.estimate(model, data)
    ignored = list(atp.output_layers(model, x).values())
    _pruner(model, x, importance, ignored_layers=ignored).step()  # type: ignore[attr-defined]
    assert model.trunk[0].out_features == 8  # something was pruned
    assert {t: v.shape[1] for t, v in model(x).items()} == {"a": 10, "b": 2}


def test_accumulate_also_records_the_output_layers() -> None:
    model, x, data = _setup()
    importance = atp.CUTImportance(LOSSES, progress=False)
    importance.accumulate(model, *data[0])
    with pytest.raises(ValueError, match="output_layers"):
        _pruner(model, x, importance).step()  # type: ignore[attr-defined]


def test_stale_scores_after_a_step_raise_then_re_estimate_works() -> None:
    model, x, data = _setup()
    importance = atp.CUTImportance(LOSSES, progress=False)
    importance.estimate(model, data)
    ignored = list(atp.output_layers(model, x).values())
    # Three steps: the one that raises still counts as a step for Torch-Pruning.
    pruner = _pruner(model, x, importance, ignored_layers=ignored, iterative_steps=3)
    pruner.step()  # type: ignore[attr-defined]
    assert importance.is_stale(model)
    with pytest.raises(RuntimeError, match=r"stale.*estimate\(model, batches\)"):
        pruner.step()  # type: ignore[attr-defined]
    importance.estimate(model, data)
    assert not importance.is_stale(model)
    pruner.step()  # type: ignore[attr-defined]
    assert model.trunk[0].out_features == 8
    assert {t: v.shape[1] for t, v in model(x).items()} == {"a": 10, "b": 2}


def test_scores_are_found_by_name_after_parameters_are_replaced() -> None:
    """A step replaces the parameters; re-estimated scores are found (by name), never None."""
    model, x, data = _setup()
    importance = atp.CUTImportance(LOSSES, progress=False)
    importance.estimate(model, data)
    ignored = list(atp.output_layers(model, x).values())
    pruner = _pruner(model, x, importance, ignored_layers=ignored, iterative_steps=2)
    before = id(model.trunk[0].weight)
    pruner.step()  # type: ignore[attr-defined]
    assert id(model.trunk[0].weight) != before
    importance.scores = {
        t: {n: torch.ones_like(p) for n, p in model.named_parameters()} for t in LOSSES
    }
    graph = pruner.DG  # type: ignore[attr-defined]
    group = graph.get_pruning_group(model.trunk[0], tp.prune_linear_out_channels, [0, 1, 2])
    result = importance(group)
    assert result is not None and result.shape == (3,)
