"""Dense tasks: losses, scores, Δm, the DeepLab model and the real-format TaskData."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from adapters.torch_pruning import count_macs, cut_prune
from benchmarks.data import IGNORE_INDEX, Split, TaskData, load_data
from benchmarks.dense import (
    dense_scores,
    depth_loss,
    normal_loss,
    primary,
    seg_loss,
    task_delta_m,
)
from benchmarks.models import build_model
from cut_plugin import select_tasks


class Oracle(nn.Module):
    """Returns stored outputs by the sample index written in the input."""

    def __init__(self, outputs: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.outputs = outputs

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        index = x[:, 0, 0, 0].long()
        return {t: v[index] for t, v in self.outputs.items()}


def _targets(n: int = 6, h: int = 5, w: int = 7, classes: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    seg = torch.randint(0, classes, (n, h, w), generator=g)
    seg[0, 0, 0] = IGNORE_INDEX
    depth = torch.rand(n, 1, h, w, generator=g) + 0.5
    depth[1, 0, 2, 3] = 0.0  # invalid
    normal = torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=g), dim=1)
    normal[2, :, 1, 1] = 0.0  # invalid
    return {"seg": seg, "depth": depth, "normal": normal}


def _data(targets: dict[str, torch.Tensor], classes: int = 4) -> TaskData:
    n, h, w = targets["seg"].shape
    inputs = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, h, w).clone()
    split = Split(inputs, targets)
    types = {"seg": "segmentation", "depth": "depth", "normal": "normal"}
    return TaskData(
        "toy", split, split, {"seg": classes, "depth": 1, "normal": 3}, types, {}, split
    )


def test_losses_ignore_invalid_pixels_and_vanish_at_the_target():
    targets = _targets()
    logits = torch.nn.functional.one_hot(targets["seg"].clamp(min=0), 4).permute(0, 3, 1, 2) * 50.0
    assert seg_loss(logits.float(), targets["seg"]) < 1e-6
    noisy = targets["depth"].clone()
    noisy[1, 0, 2, 3] = 99.0  # the invalid pixel's prediction does not count
    assert depth_loss(noisy, targets["depth"]) == 0.0
    assert depth_loss(targets["depth"] + 0.5, targets["depth"]).item() == pytest.approx(0.5)
    scaled = targets["normal"] * 3.0  # the prediction is normalised
    assert normal_loss(scaled, targets["normal"]).item() == pytest.approx(0.0, abs=1e-6)
    assert normal_loss(-targets["normal"], targets["normal"]).item() == pytest.approx(2.0, abs=1e-6)
    empty = torch.zeros(1, 1, 2, 2)
    value = torch.zeros(1, 1, 2, 2, requires_grad=True)
    assert depth_loss(value, empty).item() == 0.0  # no valid pixel: zero, still differentiable
    depth_loss(value, empty).backward()


def test_scores_of_a_perfect_model_and_delta_m():
    targets = _targets()
    data = _data(targets)
    logits = torch.nn.functional.one_hot(targets["seg"].clamp(min=0), 4).permute(0, 3, 1, 2)
    perfect = Oracle(
        {"seg": logits.float(), "depth": targets["depth"], "normal": targets["normal"]}
    )
    scores = dense_scores(perfect, data, batch_size=4)  # two batches accumulate
    assert scores["seg"]["miou"] == pytest.approx(1.0) and scores["seg"]["pixel_acc"] == 1.0
    assert scores["depth"]["abs_err"] == pytest.approx(0.0, abs=1e-7)
    assert scores["normal"]["mean"] == pytest.approx(0.0, abs=0.05)
    assert primary(data, "seg") == ("miou", True) and primary(data, "depth") == ("abs_err", False)
    worse = Oracle(
        {"seg": logits.float(), "depth": targets["depth"] * 1.1, "normal": targets["normal"]}
    )
    half = dense_scores(worse, data, tasks=["seg", "depth"])
    assert set(half) == {"seg", "depth"}
    reference = {"seg": {"miou": 0.5}, "depth": {"abs_err": 0.1}}
    better = {"seg": {"miou": 0.6}, "depth": {"abs_err": 0.05}}
    # seg +20 %, depth error halved: +50 % → mean +35 points
    assert task_delta_m(data, better, reference, ["seg", "depth"]) == pytest.approx(35.0)


def test_deeplab_outputs_full_resolution_maps_and_prunes():
    torch.manual_seed(0)
    model = build_model("deeplab", tasks={"seg": 5, "depth": 1, "normal": 3}, in_channels=3,
                        input_size=32, width=8, head_width=8)  # fmt: skip
    x = torch.rand(2, 3, 32, 40)
    out = model(x)
    assert {t: tuple(v.shape) for t, v in out.items()} == {
        "seg": (2, 5, 32, 40), "depth": (2, 1, 32, 40), "normal": (2, 3, 32, 40),
    }  # fmt: skip
    selected = select_tasks(model, ["seg", "depth"])
    assert set(selected(x)) == {"seg", "depth"}
    torch.testing.assert_close(selected(x)["seg"], out["seg"])
    model.train()  # scoring on batch statistics, as the released code does
    batch = [(x, {"seg": torch.randint(0, 5, (2, 32, 40)), "depth": torch.rand(2, 1, 32, 40) + 1})]
    losses = {"seg": seg_loss, "depth": depth_loss}
    pruned = cut_prune(model.eval(), x[:1], tasks=["seg", "depth"], losses=losses, data=batch,
                       pruning_ratio=0.5, progress=False)  # fmt: skip
    assert count_macs(pruned, x[:1])[0] < 0.75 * count_macs(selected, x[:1])[0]
    assert {t: v.shape for t, v in pruned(x).items()} == {t: out[t].shape for t in ("seg", "depth")}
    for name in ("seg", "depth"):  # output channels are protected
        assert pruned.heads[name].branches[0][-1].out_channels == out[name].shape[1]


def test_deeplab_errors_name_the_fix():
    with pytest.raises(TypeError, match="multi-task only"):
        build_model("deeplab", num_classes=3)
    with pytest.raises(TypeError, match="head_width"):
        build_model("deeplab", tasks={"seg": 3}, head_layers=2)
    with pytest.raises(ValueError, match="stem"):
        build_model("deeplab", tasks={"seg": 3}, stem="large")
    with pytest.raises(ValueError, match="one entry per stage"):
        build_model("deeplab", tasks={"seg": 3}, blocks=[1, 1], strides=[1, 2, 1, 1])


def write_npy(root, split: str, n: int, h: int = 8, w: int = 10) -> None:
    """A tiny MTAN-layout NYUv2 split under ``root``."""
    rng = np.random.default_rng(1)
    for sub in ("image", "label", "depth", "normal"):
        (root / split / sub).mkdir(parents=True)
    for i in range(n):
        np.save(root / split / "image" / f"{i}.npy", rng.random((h, w, 3), dtype=np.float32))
        label = rng.integers(-1, 13, (h, w)).astype(np.float32)
        np.save(root / split / "label" / f"{i}.npy", label)
        np.save(root / split / "depth" / f"{i}.npy", rng.random((h, w, 1), dtype=np.float32))
        normal = rng.standard_normal((h, w, 3)).astype(np.float32)
        np.save(
            root / split / "normal" / f"{i}.npy",
            normal / np.linalg.norm(normal, axis=-1, keepdims=True),
        )


def test_nyuv2_folder_becomes_train_val_test(tmp_path):
    write_npy(tmp_path, "train", 10)
    write_npy(tmp_path, "val", 3)
    data = load_data("nyuv2", root=tmp_path, val_fraction=0.2, seed=1)
    assert (len(data.train), len(data.val), len(data.test)) == (8, 2, 3)
    assert data.num_classes == {"seg": 13, "depth": 1, "normal": 3} and data.is_dense
    assert data.train.targets["seg"].min() == IGNORE_INDEX  # -1 in the files
    assert set(data.losses()) == {"seg", "depth", "normal"}
    # the held-out validation images are not in train
    train = {tuple(x.flatten()[:5].tolist()) for x in data.train.inputs}
    assert not any(tuple(x.flatten()[:5].tolist()) in train for x in data.val.inputs)
    with pytest.raises(ValueError, match="no \\['normal'\\] targets|normal"):
        load_data("cityscapes", root=tmp_path, tasks=["seg", "normal"])
    with pytest.raises(FileNotFoundError, match="lorenmt/mtan"):
        load_data("nyuv2", root=tmp_path / "missing")
