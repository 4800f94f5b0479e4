"""The bad-input matrix over the public API: each row a clear error or a documented behaviour,
and the caller's model and data unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adapters.torch_pruning as atp
from cut_plugin import (
    apply_masks,
    cut_masks,
    finetune,
    fuse,
    score_tasks,
    select_tasks,
    task_parameters,
)
from tests.toy_models import (
    MLPNet,
    ResidualNet,
    losses_for,
    make_batches,
    same_state,
    state_snapshot,
)


class Tied(nn.Module):
    """One Linear used twice (tied weights) and a module no output uses."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(6, 6)
        self.unused = nn.Linear(6, 6)
        self.heads = nn.ModuleDict({"p": nn.Linear(6, 3), "q": nn.Linear(6, 2)})

    def forward(self, x):
        h = F.relu(self.shared(F.relu(self.shared(x))))
        return {"p": self.heads["p"](h), "q": self.heads["q"](h)}


def _tied_batches():
    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(5, 6, generator=g),
            {
                "p": torch.randint(0, 3, (5,), generator=g),
                "q": torch.randint(0, 2, (5,), generator=g),
            },
        )
    ]


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    model = MLPNet()
    return model, make_batches(model, 2), losses_for(model)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, float("nan"), float("inf")])
@pytest.mark.parametrize("call", ["cut_masks", "cut_prune", "CUTPruner", "baseline_prune"])
def test_bad_ratios(mlp, ratio, call):
    model, batches, losses = mlp
    snapshot = state_snapshot(model)
    x = batches[0][0][:1]
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        if call == "cut_masks":
            cut_masks(
                model, score_tasks(model, batches, losses, progress=False), pruning_ratio=ratio
            )
        elif call == "cut_prune":
            atp.cut_prune(model, x, tasks=["p"], losses=losses, data=batches, pruning_ratio=ratio)
        elif call == "CUTPruner":
            atp.CUTPruner(model, x, tasks=["p"], losses=losses, data=batches, pruning_ratio=ratio)
        else:
            atp.baseline_prune(model, x, tasks=["p"], pruning_ratio=ratio)
    assert same_state(model, snapshot)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda m, b, ls: select_tasks(m, None), TypeError),
        (lambda m, b, ls: select_tasks(m, [1]), TypeError),
        (lambda m, b, ls: task_parameters(m, "x"), TypeError),
        (lambda m, b, ls: score_tasks(m, 3, ls), TypeError),
        (lambda m, b, ls: score_tasks(m, b, ls, max_batches=0), ValueError),
        (lambda m, b, ls: score_tasks(m, b, {"p": "loss", "q": ls["q"]}), TypeError),
        (lambda m, b, ls: fuse("scores"), TypeError),
        (lambda m, b, ls: fuse({"a": [1.0]}), TypeError),
        (lambda m, b, ls: apply_masks(m, [1]), TypeError),
        (lambda m, b, ls: finetune(m, b, ls, steps=-1, lr=1e-3), ValueError),
        (lambda m, b, ls: finetune(m, b, ls, steps=1, lr=0), ValueError),
        (lambda m, b, ls: finetune(m, [], ls, steps=1, lr=1e-3), ValueError),
        (lambda m, b, ls: atp.CUTImportance(ls, rule="nope"), ValueError),
        (lambda m, b, ls: atp.save_pruned("model", "x.pt"), TypeError),
        (
            lambda m, b, ls: atp.prune_by_masks(
                m, {"nope": torch.ones(1, dtype=torch.bool)}, b[0][0]
            ),
            ValueError,
        ),
    ],
)
def test_wrong_types_and_values(mlp, call, error):
    model, batches, losses = mlp
    snapshot = state_snapshot(model)
    with pytest.raises(error):
        call(model, batches, losses)
    assert same_state(model, snapshot)


def test_empty_loader_and_missing_target(mlp):
    model, batches, losses = mlp
    with pytest.raises(ValueError, match="yielded no batch"):
        score_tasks(model, iter([]), losses, progress=False)
    x, targets = batches[0]
    with pytest.raises(ValueError, match=r"no target for task\(s\) \['q'\]"):
        score_tasks(model, [(x, {"p": targets["p"]})], losses, progress=False)


def test_float64_model_with_float32_data_is_cast(mlp):
    """Documented: floating inputs are cast to the model's dtype (new tensors)."""
    model, batches, losses = mlp
    model64 = model.double()
    x = batches[0][0]
    scores = score_tasks(model64, batches, losses, progress=False)
    assert scores["p"]["trunk.0.weight"].dtype == torch.float64
    assert x.dtype == torch.float32  # the caller's data is unchanged
    compact = atp.cut_prune(
        model64, x[:1], tasks=["p"], losses=losses, data=batches, pruning_ratio=0.5, progress=False
    )
    assert compact(x.double())["p"].dtype == torch.float64


def test_train_mode_and_frozen_parameters_are_restored():
    torch.manual_seed(0)
    model = ResidualNet()
    batches = make_batches(model, 1)
    model.train()
    model.trunk[0].weight.requires_grad_(False)
    snapshot = state_snapshot(model)
    compact = atp.cut_prune(
        model,
        batches[0][0][:1],
        tasks=["a"],
        losses=losses_for(model),
        data=batches,
        pruning_ratio=0.5,
        progress=False,
    )
    assert model.training and not model.trunk[0].weight.requires_grad
    assert same_state(model, snapshot)
    assert compact.training  # the compact copy keeps the mode it was given in


def test_ratio_that_would_remove_every_channel_keeps_one(mlp):
    model, batches, losses = mlp
    x = batches[0][0]
    compact = atp.cut_prune(
        model,
        x[:1],
        tasks=["p", "q"],
        losses=losses,
        data=batches,
        pruning_ratio=0.999,
        progress=False,
    )
    widths = [
        m.out_features
        for name, m in compact.named_modules()
        if isinstance(m, nn.Linear) and "trunk" in name
    ]
    assert all(w >= 1 for w in widths)
    assert compact(x)["p"].shape == (x.shape[0], 4)


def test_tied_and_unused_parameters():
    model = Tied()
    batches = _tied_batches()
    losses = {"p": F.cross_entropy, "q": F.cross_entropy}
    used = task_parameters(model, batches[0][0])
    assert "unused.weight" not in used["p"] and "shared.weight" in used["p"]
    selected = select_tasks(model, ["p"])
    assert "unused.weight" not in dict(selected.named_parameters())
    scores = score_tasks(model, batches, losses, progress=False)
    masks = cut_masks(model, scores, pruning_ratio=0.5)
    assert "unused.weight" not in masks and "shared.weight" in masks
    compact = atp.cut_prune(
        model,
        batches[0][0][:1],
        tasks=["p", "q"],
        losses=losses,
        data=batches,
        pruning_ratio=0.5,
        progress=False,
    )
    assert compact(batches[0][0])["q"].shape == (5, 2)


def test_non_scalar_loss_everywhere(mlp):
    model, batches, losses = mlp
    bad = dict(losses, q=lambda o, y: F.cross_entropy(o, y, reduction="none"))
    with pytest.raises(ValueError, match="scalar"):
        score_tasks(model, batches, bad, progress=False)
    with pytest.raises(ValueError, match="scalar"):
        finetune(model, batches, bad, steps=1, lr=1e-3, progress=False)
    with pytest.raises(ValueError, match="scalar"):
        atp.cut_prune(
            model,
            batches[0][0][:1],
            tasks=["q"],
            losses=bad,
            data=batches,
            pruning_ratio=0.5,
            progress=False,
        )
