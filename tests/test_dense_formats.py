"""MTAN/LibMTL .npy layouts of NYUv2 and Cityscapes, on tiny files written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.dense_formats import (
    CITYSCAPES_7_CLASSES,
    CITYSCAPES_19_CLASSES,
    NYUV2_CLASSES,
    load_cityscapes,
    load_npy_dense,
    load_nyuv2,
)

H, W = 8, 10


def _sample(i: int) -> dict[str, np.ndarray]:
    """Sample ``i``: every array carries ``i`` so the order can be read back."""
    rng = np.random.default_rng(i)
    label = rng.integers(0, 13, (H, W)).astype(np.float64)
    label[0, 0] = -1
    label[0, 1] = i % 13
    depth = np.full((H, W, 1), 1.0 + i, dtype=np.float32)
    depth[1, 1] = 0.0
    normal = np.zeros((H, W, 3), dtype=np.float32)
    normal[..., 2] = 1.0
    normal[2, 2] = 0.0
    return {
        "image": np.full((H, W, 3), i / 20, dtype=np.float32),
        "label": label,
        "depth": depth,
        "normal": normal,
    }


def _write(
    root: Path, split: str = "train", n: int = 3, folders=("image", "label", "depth", "normal")
):
    for i in range(n):
        sample = _sample(i)
        for folder in folders:
            path = root / split / folder
            path.mkdir(parents=True, exist_ok=True)
            np.save(path / f"{i}.npy", sample[folder.split("_")[0]])
    return root


def test_values_shapes_and_dtypes(tmp_path):
    data = load_npy_dense(_write(tmp_path), "train")
    assert set(data) == {"image", "seg", "depth", "normal"}
    assert data["image"].shape == (3, 3, H, W) and data["image"].dtype == torch.float32
    assert data["seg"].shape == (3, H, W) and data["seg"].dtype == torch.int64
    assert data["depth"].shape == (3, 1, H, W) and data["depth"].dtype == torch.float32
    assert data["normal"].shape == (3, 3, H, W) and data["normal"].dtype == torch.float32
    for i in range(3):
        sample = _sample(i)
        assert torch.equal(data["image"][i], torch.from_numpy(np.moveaxis(sample["image"], -1, 0)))
        assert torch.equal(data["depth"][i, 0], torch.from_numpy(sample["depth"][..., 0]))
        assert torch.equal(
            data["normal"][i], torch.from_numpy(np.moveaxis(sample["normal"], -1, 0))
        )
        expected = torch.from_numpy(sample["label"]).long()
        expected[expected == -1] = -100
        assert torch.equal(data["seg"][i], expected)
    assert int(data["seg"][0, 0, 0]) == -100  # the file's -1


def test_numeric_order_not_lexicographic(tmp_path):
    data = load_npy_dense(_write(tmp_path, n=12), "train", tasks=["seg"])
    assert set(data) == {"image", "seg"}
    # lexicographic order would read 0, 1, 10, 11, 2, ...
    assert data["image"][:, 0, 0, 0].tolist() == pytest.approx([i / 20 for i in range(12)])
    assert data["seg"][:, 0, 1].tolist() == [i % 13 for i in range(12)]
    first = load_npy_dense(tmp_path, "train", tasks=["depth"], limit=4)
    assert first["depth"][:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_tasks_default_to_the_folders_present(tmp_path):
    data = load_npy_dense(_write(tmp_path, folders=("image", "depth")), "train")
    assert set(data) == {"image", "depth"}


def test_resize(tmp_path):
    data = load_npy_dense(_write(tmp_path), "train", size=(4, 5))
    assert data["image"].shape == (3, 3, 4, 5)
    assert data["seg"].shape == (3, 4, 5) and data["depth"].shape == (3, 1, 4, 5)
    assert torch.allclose(data["image"][1], torch.full((3, 4, 5), 1 / 20))
    original = load_npy_dense(tmp_path, "train")
    for i in range(3):  # nearest: every label is one of the original's
        assert set(data["seg"][i].unique().tolist()) <= set(original["seg"][i].unique().tolist())
    big = load_npy_dense(tmp_path, "train", size=(16, 20))
    depth, normal = big["depth"][:, 0], big["normal"]
    valid = depth > 0
    assert (~valid).any()  # the invalid pixel stays invalid (0) ...
    for i in range(3):  # ... and never leaks into its valid neighbours
        assert torch.allclose(depth[i][valid[i]], torch.tensor(1.0 + i))
    norms = normal.norm(dim=1)
    valid_normal = norms > 0.5
    assert (~valid_normal).any()
    assert torch.allclose(norms[valid_normal], torch.tensor(1.0))
    assert torch.allclose(normal[:, 2][valid_normal], torch.tensor(1.0))
    assert torch.equal(norms[~valid_normal], torch.zeros_like(norms[~valid_normal]))


def test_resize_renormalises_blended_normals(tmp_path):
    root = _write(tmp_path, n=1)
    normal = np.zeros((H, W, 3), dtype=np.float32)
    normal[:, : W // 2, 0] = 1.0  # left half points along x, right half along z
    normal[:, W // 2 :, 2] = 1.0
    np.save(root / "train" / "normal" / "0.npy", normal)
    resized = load_npy_dense(root, "train", tasks=["normal"], size=(H, 2 * W + 1))["normal"]
    norms = resized.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    blended = (resized[0, 0] > 0.1) & (resized[0, 2] > 0.1)
    assert blended.any()


def test_nyuv2_and_cityscapes_wrappers(tmp_path):
    data, names = load_nyuv2(_write(tmp_path / "nyu"), "train")
    assert names == list(NYUV2_CLASSES) and len(names) == 13
    assert set(data) == {"image", "seg", "depth", "normal"}
    # MTAN's Cityscapes release: label_7 / label_19 folders, no normals
    city = _write(tmp_path / "city", split="val", folders=("image", "label_7", "label_19", "depth"))
    for i in range(3):  # _sample's labels go up to 12: fine for 19 classes, too many for 7
        np.save(city / "val" / "label_7" / f"{i}.npy", np.clip(_sample(i)["label"], -1, 6))
    data, names = load_cityscapes(city, "val")
    assert names == list(CITYSCAPES_7_CLASSES) and len(names) == 7
    assert set(data) == {"image", "seg", "depth"}
    assert int(data["seg"].max()) <= 6
    np.save(city / "val" / "label_7" / "2.npy", _sample(2)["label"])
    with pytest.raises(ValueError, match=r"label_7/2.npy: label id 12 >= 7 classes"):
        load_cityscapes(city, "val")
    assert load_cityscapes(city, "val", limit=2)[0]["seg"].shape == (2, H, W)
    data, names = load_cityscapes(city, "val", classes=19)
    assert names == list(CITYSCAPES_19_CLASSES) and data["seg"].shape == (3, H, W)
    # LibMTL's copy: a single 7-class label folder
    libmtl = _write(tmp_path / "libmtl", n=1, folders=("image", "label", "depth"))
    np.save(libmtl / "train" / "label" / "0.npy", np.clip(_sample(0)["label"], -1, 6))
    data, _ = load_cityscapes(libmtl)
    assert data["seg"].shape == (1, H, W)
    with pytest.raises(ValueError, match="no surface normals"):
        load_cityscapes(libmtl, tasks=["normal"])
    with pytest.raises(ValueError, match="classes"):
        load_cityscapes(libmtl, classes=13)


def test_missing_root_names_layout_and_source(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"\{train,val\}.*lorenmt/mtan"):
        load_nyuv2(tmp_path / "nowhere")


def test_missing_split_and_subfolder(tmp_path):
    root = _write(tmp_path, folders=("image", "label"))
    with pytest.raises(FileNotFoundError, match=r"val not found.*\['train'\]"):
        load_npy_dense(root, "val")
    with pytest.raises(FileNotFoundError, match=r"depth not found.*task 'depth'"):
        load_npy_dense(root, "train", tasks=["depth"])
    with pytest.raises(ValueError, match="'train' or 'val'"):
        load_npy_dense(root, "test")
    with pytest.raises(ValueError, match="unknown tasks"):
        load_npy_dense(root, "train", tasks=["edges"])
    empty = tmp_path / "empty" / "train" / "image"
    empty.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no <i>.npy"):
        load_npy_dense(tmp_path / "empty", "train")


def test_mismatched_counts(tmp_path):
    root = _write(tmp_path)
    (root / "train" / "depth" / "2.npy").unlink()
    with pytest.raises(
        ValueError, match=r"depth holds 2 files but .*image holds 3; missing indices \[2\]"
    ):
        load_npy_dense(root, "train")


@pytest.mark.parametrize(
    ("folder", "array", "match"),
    [
        ("image", np.zeros((H, W), np.float32), r"image/1.npy: expected shape \(H, W, 3\)"),
        ("label", np.zeros((H, W, 1)), r"label/1.npy: expected shape \(H, W\)"),
        ("depth", np.zeros((H, W, 3), np.float32), r"depth/1.npy: expected shape \(H, W, 1\)"),
        ("normal", np.zeros((H, W, 1), np.float32), r"normal/1.npy: expected shape \(H, W, 3\)"),
        ("depth", np.ones((H + 1, W, 1), np.float32), "height/width differ"),
        ("label", np.full((H, W), 0.5), r"label/1.npy: label holds non-integer"),
    ],
)
def test_bad_shapes_name_the_file(tmp_path, folder, array, match):
    root = _write(tmp_path)
    np.save(root / "train" / folder / "1.npy", array)
    with pytest.raises(ValueError, match=match):
        load_npy_dense(root, "train")


def test_images_of_different_sizes_need_size(tmp_path):
    root = _write(tmp_path, n=2, folders=("image",))
    np.save(root / "train" / "image" / "1.npy", np.zeros((H, W + 2, 3), np.float32))
    with pytest.raises(ValueError, match=r"1.npy.*size=\(h, w\)"):
        load_npy_dense(root, "train")
    assert load_npy_dense(root, "train", size=(4, 4))["image"].shape == (2, 3, 4, 4)


def test_bad_options_and_names(tmp_path):
    root = _write(tmp_path, n=1)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="limit"):
            load_npy_dense(root, "train", limit=bad)
    for bad in ((4,), (0, 4), (4.0, 4), 4):
        with pytest.raises(ValueError, match="size"):
            load_npy_dense(root, "train", size=bad)
    np.save(root / "train" / "image" / "x.npy", np.zeros((H, W, 3)))
    with pytest.raises(ValueError, match=r"<i>.npy.*x.npy"):
        load_npy_dense(root, "train")
    with pytest.raises(TypeError, match="label_dir"):
        load_nyuv2(root, label_dir="label_7")
