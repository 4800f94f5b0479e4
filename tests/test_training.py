"""The one multi-task training loop (train_tasks) and the three entry points that wrap it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from benchmarks.training import train
from cut_plugin import finetune
from cut_plugin.training import TrainingHistory, summed_loss, train_tasks
from pam_plugin import build_merged, retrain
from tests.toy_models import MLPNet, losses_for, make_batches, state_snapshot

Batches = list[tuple[Tensor, dict[str, Tensor]]]


def mlp(seed: int = 0) -> tuple[nn.Module, Batches]:
    torch.manual_seed(seed)
    model = MLPNet()
    return model, make_batches(model, count=2, batch=6, seed=seed)


def same_parameters(a: nn.Module, b: nn.Module) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(x, y) for x, y in pairs)


def sgd(lr: float = 0.1):
    return lambda params: torch.optim.SGD(params, lr=lr)


def test_one_pass_equals_a_literal_loop_over_two_batches() -> None:
    """Oracle: one SGD step per batch on the unweighted task sum, batches in order."""
    model, batches = mlp()
    reference = copy.deepcopy(model).train()
    history = train_tasks(
        model, batches, losses_for(model), epochs=1, optimizer=sgd(), progress=False
    )
    for x, y in batches:
        reference.zero_grad()
        out = reference(x)
        (F.cross_entropy(out["p"], y["p"]) + F.cross_entropy(out["q"], y["q"])).backward()
        with torch.no_grad():
            for p in reference.parameters():
                p -= 0.1 * p.grad
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name
    assert history.steps == 2 and history.passes == [0, 0] and history.samples == [6, 6]
    assert all(p.grad is None for p in model.parameters())  # no .grad left behind


def test_steps_re_iterate_and_epochs_cap_at_steps() -> None:
    model, batches = mlp()
    seen: list[int] = []

    def per_epoch(epoch: int) -> Batches:
        seen.append(epoch)
        return batches

    history = train_tasks(model, per_epoch, losses_for(model), steps=5, lr=1e-3, progress=False)
    assert history.steps == 5 and history.passes == [0, 0, 1, 1, 2] and seen == [0, 1, 2]
    capped = train_tasks(
        model, batches, losses_for(model), epochs=4, steps=3, lr=1e-3, progress=False
    )
    assert capped.passes == [0, 0, 1]
    assert train_tasks(model, [], losses_for(model), steps=0, lr=1e-3, progress=False).steps == 0


def test_scheduler_steps_once_per_complete_pass() -> None:
    model, batches = mlp()
    rates: list[float] = []

    def schedule(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: rates.append(e) or 0.5**e)

    train_tasks(
        model,
        batches,
        losses_for(model),
        epochs=3,
        optimizer=sgd(),
        scheduler=schedule,
        progress=False,
    )
    assert rates == [0, 1, 2, 3]  # built at 0, then one step after each of the 3 passes


def test_masks_stay_zero_and_the_rest_learns() -> None:
    model, batches = mlp()
    masks = {
        name: torch.rand(p.shape) > 0.5 for name, p in model.named_parameters() if p.dim() == 2
    }
    before = state_snapshot(model)
    train_tasks(model, batches, losses_for(model), steps=6, lr=1e-2, masks=masks, progress=False)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert (params[name][~mask] == 0).all(), name
        assert not torch.equal(params[name][mask], before[name][mask]), name


@settings(max_examples=10, deadline=None)
@given(keep=st.floats(0.0, 1.0), steps=st.integers(1, 3), seed=st.integers(0, 100))
def test_masked_elements_are_zero_after_any_training(keep: float, steps: int, seed: int) -> None:
    model, batches = mlp(seed)
    generator = torch.Generator().manual_seed(seed)
    masks = {
        n: torch.rand(p.shape, generator=generator) < keep for n, p in model.named_parameters()
    }
    train_tasks(model, batches, losses_for(model), steps=steps, lr=0.1, masks=masks, progress=False)
    params = dict(model.named_parameters())
    assert all((params[n][~m] == 0).all() for n, m in masks.items())


class DtypeProbe(MLPNet):
    """Records the dtype of every input it is called with."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.dtype] = []

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self.seen.append(x.dtype)
        return super().forward(x)


def test_inputs_and_targets_move_to_the_models_dtype_and_device() -> None:
    model = DtypeProbe().double()
    batches = [
        (torch.randn(4, 12), {"p": torch.randint(0, 4, (4,)), "q": torch.randint(0, 3, (4,))})
    ]
    mse = {"p": lambda o, y: F.mse_loss(o[:, 0], y.float())}  # float target, cast to float64
    train_tasks(model, batches, mse, steps=2, lr=1e-3, progress=False)
    assert model.seen == [torch.float64, torch.float64]
    assert batches[0][0].dtype == torch.float32  # the caller's tensors are not changed


def test_retrain_moves_inputs_to_the_models_dtype() -> None:
    """retrain used to call the model on the raw inputs: a float64 network failed on float32."""
    torch.manual_seed(0)
    nets = {t: nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)) for t in "AB"}
    merged = build_merged(nets, torch.randn(8, 6)).double()
    batches = [(torch.randn(8, 6), {t: torch.randint(0, 3, (8,)) for t in "AB"})]
    trained = retrain(merged, batches, {t: F.cross_entropy for t in "AB"}, progress=False)
    assert next(trained.parameters()).dtype == torch.float64
    assert not torch.equal(next(trained.parameters()), next(merged.parameters()))


def test_modes_of_model_and_teacher_are_restored() -> None:
    model, batches = mlp()
    model.eval()
    model.heads["p"].train()
    teacher = copy.deepcopy(model).train()
    train_tasks(
        model,
        batches,
        losses_for(model),
        steps=2,
        lr=1e-3,
        teacher=teacher,
        distill=1.0,
        progress=False,
    )
    assert not model.training and model.heads["p"].training and not model.trunk.training
    assert all(m.training for m in teacher.modules())


def test_distillation_changes_the_result() -> None:
    model, batches = mlp()
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(1.0)
    plain, taught = copy.deepcopy(model), copy.deepcopy(model)
    train_tasks(plain, batches, losses_for(model), steps=2, lr=1e-2, progress=False)
    train_tasks(
        taught,
        batches,
        losses_for(model),
        steps=2,
        lr=1e-2,
        teacher=teacher,
        distill=1.0,
        progress=False,
    )
    assert not torch.equal(plain.heads["p"].weight, taught.heads["p"].weight)


def test_ignore_index_skips_a_task_and_an_all_ignored_pass_raises() -> None:
    model, batches = mlp()
    ignored = [(x, {"p": y["p"], "q": torch.full_like(y["q"], -100)}) for x, y in batches]
    loss, _ = summed_loss(model, *ignored[0], losses_for(model), ignore_index=-100)
    only_p, _ = summed_loss(model, *ignored[0], {"p": F.cross_entropy})
    assert loss is not None and only_p is not None and torch.equal(loss, only_p)
    nothing = [(x, {"p": torch.full_like(y["p"], -100)}) for x, y in batches]
    with pytest.raises(ValueError, match="no batch with a target to learn"):
        train_tasks(
            model,
            nothing,
            {"p": F.cross_entropy},
            epochs=1,
            lr=1e-3,
            ignore_index=-100,
            progress=False,
        )


def test_epoch_losses_are_sample_weighted() -> None:
    history = TrainingHistory(losses=[1.0, 4.0, 2.0], samples=[3, 1, 5], passes=[0, 0, 1])
    assert history.epoch_losses() == [pytest.approx(7 / 4), 2.0]


def test_nan_loss_names_the_task_and_the_batch() -> None:
    model, batches = mlp()
    bad = dict(losses_for(model), q=lambda out, y: out.sum() * float("nan"))
    with pytest.raises(ValueError, match=r"the loss of task 'q' is nan at batch 0"):
        train_tasks(model, batches, bad, steps=1, lr=1e-3, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"lr": 1e-3}, ValueError, "give steps"),
        ({"steps": 1}, ValueError, "either lr"),
        ({"steps": 1, "lr": 1e-3, "optimizer": sgd()}, ValueError, "either lr"),
        ({"steps": 1, "lr": 0.0}, ValueError, r"lr must be in \(0.0"),
        ({"steps": -1, "lr": 1e-3}, ValueError, "steps must be an int >= 0"),
        ({"epochs": 0, "lr": 1e-3}, ValueError, "epochs must be an int >= 1"),
        ({"steps": 1, "lr": 1e-3, "distill": 1.0}, ValueError, "needs a teacher"),
        ({"steps": 1, "lr": 1e-3, "ignore_index": "x"}, TypeError, "ignore_index"),
    ],
)
def test_bad_options_raise_naming_the_option(kwargs: dict, error: type, message: str) -> None:
    model, batches = mlp()
    with pytest.raises(error, match=message):
        train_tasks(model, batches, losses_for(model), progress=False, **kwargs)


def test_bad_batches_raise_clearly() -> None:
    model, batches = mlp()
    losses = losses_for(model)
    with pytest.raises(TypeError, match="must be a pair"):
        train_tasks(model, [batches[0][0]], losses, steps=1, lr=1e-3, progress=False)
    with pytest.raises(ValueError, match=r"no target for task\(s\) \['q'\]"):
        train_tasks(
            model,
            [(batches[0][0], {"p": batches[0][1]["p"]})],
            losses,
            steps=1,
            lr=1e-3,
            progress=False,
        )
    with_z = [(x, {**y, "z": y["p"]}) for x, y in batches]
    with pytest.raises(ValueError, match=r"no output for task\(s\) \['z'\]"):
        train_tasks(model, with_z, {"z": F.cross_entropy}, steps=1, lr=1e-3, progress=False)
    one_shot = iter(batches)
    with pytest.raises(ValueError, match="one-shot iterator"):
        train_tasks(model, one_shot, losses, steps=3, lr=1e-3, progress=False)
    with pytest.raises(ValueError, match="losses is empty"):
        train_tasks(model, batches, {}, steps=1, lr=1e-3, progress=False)


def test_the_three_entry_points_are_the_one_loop() -> None:
    """finetune, retrain and the benchmarks' train give what train_tasks gives."""
    model, batches = mlp()
    losses = losses_for(model)
    reference = copy.deepcopy(model)
    train_tasks(reference, batches, losses, steps=3, lr=1e-2, progress=False)
    tuned = finetune(model, batches, losses, steps=3, lr=1e-2, progress=False)
    assert tuned is not model
    assert same_parameters(tuned, reference)

    reference = copy.deepcopy(model)

    def momentum(params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=0.0)

    train_tasks(reference, batches, losses, epochs=2, optimizer=momentum, progress=False)
    again = retrain(model, batches, losses, epochs=2, lr=0.05, optimizer="sgd", progress=False)
    assert same_parameters(again, reference)

    trained = copy.deepcopy(model)
    history = train(trained, lambda e: batches, losses, epochs=2, lr=1e-2, progress=False)
    assert len(history) == 2 and not trained.training
    assert not torch.equal(trained.heads["p"].weight, model.heads["p"].weight)
