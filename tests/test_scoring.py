"""score_tasks: hand-computed values, accumulation over batches, nothing of the model changes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cut_plugin import score_tasks
from tests.toy_models import (
    ResidualNet,
    init_nontrivial,
    losses_for,
    make_batches,
    same_state,
    state_snapshot,
)


class TwoLinear(nn.Module):
    """y_t = W_t (U x): a shared layer U and one linear head per task."""

    tasks = ("s", "t")

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(3, 4, bias=False)
        self.heads = nn.ModuleDict(
            {"s": nn.Linear(4, 2, bias=False), "t": nn.Linear(4, 1, bias=False)}
        )

    def forward(self, x):
        h = self.shared(x)
        return {k: head(h) for k, head in self.heads.items()}


def _mse_batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 3, generator=g)
    return x, {"s": torch.randn(5, 2, generator=g), "t": torch.randn(5, 1, generator=g)}


def test_taylor_matches_hand_computation():
    torch.manual_seed(0)
    model = TwoLinear()
    x, y = _mse_batch(0)
    scores = score_tasks(model, [(x, y)], {"s": F.mse_loss, "t": F.mse_loss}, progress=False)
    U, Ws = model.shared.weight.detach(), model.heads["s"].weight.detach()
    h = x @ U.T
    residual = h @ Ws.T - y["s"]  # L = mean(residual^2) over 5*2 elements
    dL_dout = 2 * residual / residual.numel()
    grad_Ws = dL_dout.T @ h
    grad_U = (dL_dout @ Ws).T @ x
    torch.testing.assert_close(scores["s"]["heads.s.weight"], (Ws * grad_Ws).abs())
    torch.testing.assert_close(scores["s"]["shared.weight"], (U * grad_U).abs())
    assert set(scores["s"]) == {"shared.weight", "heads.s.weight"}
    assert set(scores["t"]) == {"shared.weight", "heads.t.weight"}


@pytest.mark.parametrize("criterion", ["taylor", "fisher"])
def test_two_batches_accumulate(criterion):
    torch.manual_seed(0)
    model = TwoLinear()
    b1, b2 = _mse_batch(1), _mse_batch(2)
    losses = {"s": F.mse_loss, "t": F.mse_loss}
    both = score_tasks(model, [b1, b2], losses, criterion=criterion, progress=False)
    one = score_tasks(model, [b1], losses, criterion=criterion, progress=False)
    two = score_tasks(model, [b2], losses, criterion=criterion, progress=False)
    for task in both:
        for name in both[task]:
            torch.testing.assert_close(both[task][name], one[task][name] + two[task][name])
            assert not torch.equal(both[task][name], one[task][name])


def test_magnitude_is_abs_weight_of_used_parameters():
    model = TwoLinear()
    scores = score_tasks(
        model,
        [_mse_batch(0)],
        {"t": F.mse_loss},
        tasks=["t"],
        criterion="magnitude",
        progress=False,
    )
    assert list(scores) == ["t"]
    torch.testing.assert_close(
        scores["t"]["heads.t.weight"], model.heads["t"].weight.detach().abs()
    )
    assert "heads.s.weight" not in scores["t"]


def test_model_grad_flags_mode_and_buffers_are_restored():
    torch.manual_seed(0)
    model = init_nontrivial(ResidualNet())
    batches = make_batches(model, 2)
    model.train()
    model.trunk[0].weight.requires_grad_(False)
    sentinel = torch.full_like(model.heads["a"][2].weight, 7.0)
    model.heads["a"][2].weight.grad = sentinel.clone()
    snapshot = state_snapshot(model)  # includes BatchNorm running statistics
    scores = score_tasks(model, batches, losses_for(model), tasks=["a", "seg"], progress=False)
    assert same_state(model, snapshot)
    assert model.training and all(m.training for m in model.modules())
    assert not model.trunk[0].weight.requires_grad
    torch.testing.assert_close(model.heads["a"][2].weight.grad, sentinel)
    assert model.trunk[1].weight.grad is None
    assert "trunk.0.weight" in scores["a"]  # frozen parameters are scored too
    assert scores["a"]["trunk.0.weight"].sum() > 0


def test_max_batches_limits_the_data():
    model = TwoLinear()
    losses = {"s": F.mse_loss, "t": F.mse_loss}
    batches = [_mse_batch(i) for i in range(4)]
    limited = score_tasks(model, batches, losses, max_batches=2, progress=False)
    first_two = score_tasks(model, batches[:2], losses, progress=False)
    torch.testing.assert_close(limited["s"]["shared.weight"], first_two["s"]["shared.weight"])


def test_nan_loss_names_task_and_batch():
    model = TwoLinear()
    good, bad = _mse_batch(0), _mse_batch(1)
    bad[1]["t"][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"task 't'.*batch 1"):
        score_tasks(model, [good, bad], {"s": F.mse_loss, "t": F.mse_loss}, progress=False)
