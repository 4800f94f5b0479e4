"""On-disk formats of the papers' datasets: Fashion-MNIST idx files, CelebA attributes + images.

For users who have the real data (it cannot be downloaded here); tested on tiny
files the tests write. CelebA attribute groups become multi-label tasks.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from benchmarks.data import Split, TaskData, TaskType


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file (the MNIST / Fashion-MNIST format), gzipped or not."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in dtypes:
        raise ValueError(f"{path} is not an idx file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} values")
    return data.reshape(shape).astype(data.dtype.newbyteorder("="))


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root}; download the four idx files from "
        "https://github.com/zalandoresearch/fashion-mnist (data/fashion) and put them in that folder"
    )


def load_fashion_mnist(
    root: str | os.PathLike[str], *, split: Literal["train", "test"] = "train"
) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST (or MNIST) idx files in ``root``: ``(N, 1, 28, 28)`` in [0, 1], labels int64."""
    prefixes = {"train": "train", "test": "t10k"}
    if split not in prefixes:
        raise ValueError(f"split must be one of {list(prefixes)}, got {split!r}")
    root = Path(root)
    images = read_idx(_find_idx(root, f"{prefixes[split]}-images-idx3-ubyte"))
    labels = read_idx(_find_idx(root, f"{prefixes[split]}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise ValueError(
            f"{root}: {len(images)} images but {len(labels)} labels for split {split!r}"
        )
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


CELEBA_GROUPS: dict[str, tuple[str, ...]] = {
    # The 40 attributes grouped by face region (as in Hand & Chellappa's MCNN, AAAI 2017).
    "gender": ("Male",),
    "nose": ("Big_Nose", "Pointy_Nose"),
    "mouth": ("Big_Lips", "Smiling", "Wearing_Lipstick", "Mouth_Slightly_Open"),
    "eyes": ("Arched_Eyebrows", "Bags_Under_Eyes", "Bushy_Eyebrows", "Narrow_Eyes", "Eyeglasses"),
    "face": ("Attractive", "Blurry", "Oval_Face", "Pale_Skin", "Young", "Heavy_Makeup"),
    "around_head": (
        "Black_Hair",
        "Blond_Hair",
        "Brown_Hair",
        "Gray_Hair",
        "Bald",
        "Receding_Hairline",
        "Bangs",
        "Straight_Hair",
        "Wavy_Hair",
        "Wearing_Earrings",
        "Wearing_Hat",
        "Wearing_Necklace",
        "Wearing_Necktie",
    ),  # fmt: skip
    "facial_hair": ("5_o_Clock_Shadow", "Goatee", "Mustache", "No_Beard", "Sideburns"),
    "cheeks": ("High_Cheekbones", "Rosy_Cheeks"),
    "fat": ("Chubby", "Double_Chin"),
}


def _read_face(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    side = min(rgb.size)
    left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
    square = rgb.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def load_celeba(
    root: str | os.PathLike[str],
    *,
    groups: Mapping[str, Sequence[str]] | None = None,
    image_size: int = 64,
    max_images: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> TaskData:
    """CelebA from ``root/list_attr_celeba.txt`` and ``root/img_align_celeba/``: attribute groups → tasks.

    Each task is multi-label: ``targets[task]: (N, len(group))`` float 0/1, images
    ``(N, 3, image_size, image_size)`` in [0, 1] (centre square crop, resize). With
    ``root/list_eval_partition.txt`` train = partition 0 and test = partition 2;
    without it the split is random by ``seed``. ``max_images`` keeps the first rows
    (the full set at 64×64 needs ~10 GB).
    """
    root = Path(root)
    attr_path, image_dir = root / "list_attr_celeba.txt", root / "img_align_celeba"
    where = (
        f"; download CelebA (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html) and put "
        f"list_attr_celeba.txt and the img_align_celeba/ folder in {root}"
    )
    if not attr_path.is_file():
        raise FileNotFoundError(f"CelebA attribute file {attr_path} not found{where}")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"CelebA image folder {image_dir} not found{where}")
    lines = [line.split() for line in attr_path.read_text().splitlines()[1:] if line.strip()]
    header, rows = lines[0], lines[1 : None if max_images is None else max_images + 1]
    if not rows or any(len(r) != len(header) + 1 for r in rows):
        raise ValueError(
            f"{attr_path}: expected rows 'file v1 … v{len(header)}' under the names line"
        )
    groups = dict(CELEBA_GROUPS if groups is None else groups)
    unknown = sorted({a for g in groups.values() for a in g} - set(header))
    if not groups or unknown:
        raise ValueError(f"groups name unknown attributes {unknown}; the attributes are {header}")
    values = np.array([[int(v) > 0 for v in r[1:]] for r in rows], dtype=np.float32)
    targets = {
        t: torch.from_numpy(values[:, [header.index(a) for a in g]]) for t, g in groups.items()
    }
    files = [r[0] for r in rows]
    missing = [f for f in files if not (image_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} images listed in {attr_path} are missing from {image_dir}: {missing[:3]}"
        )
    pixels = np.stack([_read_face(image_dir / f, image_size) for f in files])
    inputs = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    partition_path = root / "list_eval_partition.txt"
    if partition_path.is_file():
        part = dict(
            line.split()[:2] for line in partition_path.read_text().splitlines() if line.strip()
        )
        where_in = np.array([int(part.get(f, -1)) for f in files])
        train, test = (
            torch.from_numpy(np.flatnonzero(where_in == 0)),
            torch.from_numpy(np.flatnonzero(where_in == 2)),
        )
    else:
        order = torch.from_numpy(np.random.default_rng(seed).permutation(len(files)))
        cut = int(round(len(files) * test_fraction))
        train, test = order[cut:], order[:cut]
    data = Split(inputs, targets)
    config: dict[str, Any] = {
        "source": "celeba",
        "root": str(root),
        "groups": {t: list(g) for t, g in groups.items()},
    }
    config.update(
        image_size=image_size, max_images=max_images, test_fraction=test_fraction, seed=seed
    )
    types: dict[str, TaskType] = dict.fromkeys(groups, "multilabel")
    classes = {t: len(g) for t, g in groups.items()}
    return TaskData("celeba", data.select(train), data.select(test), classes, types, config)
