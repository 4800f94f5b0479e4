"""Model zoo and training: shapes, fx tracing, Torch-Pruning, learning, the pretrained cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.fx
from torch import nn

import benchmarks.training as training
from benchmarks.data import IGNORE_INDEX, Split, TaskData, batches, class_split_tasks
from benchmarks.models import MODELS, MultiTaskNet, SingleTaskNet, build_model
from benchmarks.training import evaluate, pretrained, pretrained_record, train

TASKS = {"digit": 10, "parity": 2, "mod3": 3}
HEADS = {"digit": 2, "parity": 1, "mod3": 1}
SIZES = {"lenet5": 28, "vgg": 28, "resnet18": 28, "mobilenetv2": 28, "mlp": 28}
SMALL: dict[str, dict[str, Any]] = {
    "vgg": {"width": 4},
    "resnet18": {"width": 4},
    "mobilenetv2": {"width": 8},
}


def inputs(size: int | tuple[int, int], n: int = 3, channels: int = 1) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(n, channels, h, w, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_single_task_forward(name: str) -> None:
    model = build_model(name, num_classes=5, **SMALL.get(name, {}))
    assert isinstance(model, SingleTaskNet)
    assert model(inputs(28)).shape == (3, 5)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("size", [28, (28, 56)])
def test_multi_task_forward_and_fx_trace(name: str, size: int | tuple[int, int]) -> None:
    model = build_model(
        name, tasks=TASKS, head_layers=HEADS, input_size=size, **SMALL.get(name, {})
    )
    assert isinstance(model, MultiTaskNet) and list(model.heads) == list(TASKS)
    assert isinstance(model.heads["digit"], nn.Sequential) and isinstance(
        model.heads["parity"], nn.Linear
    )
    x = inputs(size)
    model.eval()
    out = model(x)
    assert {t: tuple(v.shape) for t, v in out.items()} == {t: (3, c) for t, c in TASKS.items()}
    traced = torch.fx.symbolic_trace(model)
    again = traced(x)
    assert all(torch.allclose(again[t], out[t]) for t in TASKS)


@pytest.mark.parametrize("name", ["lenet5", "resnet18", "mobilenetv2"])
def test_rgb_and_other_sizes(name: str) -> None:
    model = build_model(name, tasks={"a": 2}, in_channels=3, input_size=40, **SMALL.get(name, {}))
    assert model(inputs(40, channels=3))["a"].shape == (3, 2)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_torch_pruning_removes_channels_and_keeps_heads(name: str) -> None:
    tp = pytest.importorskip("torch_pruning")
    model = build_model(name, tasks=TASKS, head_layers=HEADS, **SMALL.get(name, {}))
    heads: Any = model.heads
    outputs = [heads["digit"][-1], heads["parity"], heads["mod3"]]
    before = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.MagnitudePruner(
        model,
        (inputs(28),),
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.5,
        ignored_layers=outputs,
    )
    pruner.step()
    assert sum(p.numel() for p in model.parameters()) < 0.6 * before
    assert {t: v.shape[1] for t, v in model(inputs(28)).items()} == TASKS


def test_build_model_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="resnet18"):
        build_model("resnet50", num_classes=3)
    with pytest.raises(TypeError, match="exactly one"):
        build_model("mlp", num_classes=3, tasks={"a": 2})
    with pytest.raises(TypeError, match="exactly one"):
        build_model("mlp")
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", num_classes=0)
    with pytest.raises(ValueError, match="head_layers"):
        build_model("mlp", tasks={"a": 2, "b": 3}, head_layers={"a": 2})
    with pytest.raises(TypeError, match="colour"):
        build_model("vgg", num_classes=3, colour=1)
    with pytest.raises(ValueError, match="too small"):
        build_model("lenet5", num_classes=3, input_size=8)


def tiny_data() -> TaskData:
    """Two separable 2-class tasks on 16-d inputs (plus a -100 target) for fast training tests."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1, 4, 4, generator=gen)
    a = (x[:, 0, 0, 0] > 0).long()
    b = (x[:, 0, 1, 1] > 0).long()
    b[:8] = IGNORE_INDEX
    split = Split(x, {"a": a, "b": b})
    return TaskData(
        "tiny",
        split.select(torch.arange(192)),
        split.select(torch.arange(192, 256)),
        {"a": 2, "b": 2},
        {},
        {"kind": "tiny"},
    )


def test_train_lowers_loss_and_learns() -> None:
    data = tiny_data()
    torch.manual_seed(0)  # the initialisation must not depend on what earlier tests drew
    model = build_model("mlp", tasks=data.num_classes, input_size=(4, 4), width=32)
    before = evaluate(model, data)
    history = train(
        model,
        lambda e: batches(data.train, 32, seed=e),
        data.losses(),
        epochs=8,
        lr=1e-2,
        seed=0,
        progress=False,
    )
    assert history[-1] < 0.5 * history[0] and not model.training
    after = evaluate(model, data)
    assert after["a"] > 0.85 and after["b"] > 0.85 and after["a"] > before["a"]


def test_evaluate_skips_ignored_targets_and_scores_multilabel() -> None:
    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
            return {"cls": logits, "tags": logits - 1.0}

    targets = {"cls": torch.tensor([0, 0, IGNORE_INDEX, 1]), "tags": torch.tensor([[1.0, 0.0]] * 4)}
    scores = evaluate(Fixed(), [(torch.zeros(4, 1), targets)])
    assert scores == {"cls": pytest.approx(2 / 3), "tags": pytest.approx(4 / 8)}


def test_pretrained_cache_hit_returns_identical_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tiny_data()
    options: dict[str, Any] = {
        "epochs": 2,
        "batch_size": 64,
        "cache_dir": tmp_path,
        "progress": False,
    }
    first = pretrained("mlp", data, seed=3, model_kwargs={"width": 16}, **options)
    assert len(list(tmp_path.glob("*.pt"))) == 1 and not first.training

    def fail(*args: object, **kwargs: object) -> list[float]:
        raise AssertionError("a cache hit must not train")

    monkeypatch.setattr(training, "train", fail)
    second = pretrained("mlp", data, seed=3, model_kwargs={"width": 16}, **options)
    assert all(
        torch.equal(p, q)
        for p, q in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )
    record = pretrained_record("mlp", data, seed=3, model_kwargs={"width": 16}, **options)
    assert set(record["test_accuracy"]) == {"a", "b"} and len(record["loss_history"]) == 2
    with pytest.raises(AssertionError, match="cache hit"):
        pretrained("mlp", data, seed=4, model_kwargs={"width": 16}, **options)


def test_pretrained_single_task_network_on_its_own_classes(tmp_path: Path) -> None:
    data = class_split_tasks("digits")
    model = pretrained(
        "mlp",
        data,
        task="classes_56789",
        epochs=10,
        lr=1e-2,
        model_kwargs={"width": 32},
        cache_dir=tmp_path,
        progress=False,
    )
    assert model(data.test.inputs[:4]).shape == (4, 5)
    record = pretrained_record(
        "mlp",
        data,
        task="classes_56789",
        epochs=10,
        lr=1e-2,
        model_kwargs={"width": 32},
        cache_dir=tmp_path,
        progress=False,
    )
    assert (
        record["config"]["task"] == "classes_56789"
        and record["test_accuracy"]["classes_56789"] > 0.8
    )
    with pytest.raises(TypeError, match="data_key"):
        pretrained("mlp", 3, cache_dir=tmp_path)  # type: ignore[arg-type]
