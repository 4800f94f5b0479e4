"""Pre-processed NYUv2 and Cityscapes as MTAN / LibMTL ship them: one ``.npy`` per image and task.

Layout (``lorenmt/mtan`` ``im2im_pred/create_dataset.py``, LibMTL ``examples/*/create_dataset.py``)::

    ROOT/{train,val}/image/<i>.npy    (H, W, 3) float in [0, 1]
    ROOT/{train,val}/label/<i>.npy    (H, W) float class ids, -1 = ignore
    ROOT/{train,val}/depth/<i>.npy    (H, W, 1) float, 0 = invalid
    ROOT/{train,val}/normal/<i>.npy   (H, W, 3) float in [-1, 1], zeros = invalid (NYUv2 only)

NYUv2 (288×384): 13 classes, 795 train / 654 val. Cityscapes (MTAN's 128×256
``cityscapes2`` or 256×512 release): ``label_2``, ``label_7`` and ``label_19``
folders and an inverse-depth (disparity) ``depth``; LibMTL's copy has one
7-class ``label`` folder. ``val`` is the test split of both papers.

For users who have the data (it cannot be downloaded here); tested on tiny files
the tests write. Everything is read into memory (NYUv2 train ≈ 3.2 GB as float32);
use ``limit`` or ``size`` for less.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

NYUV2_CLASSES: tuple[str, ...] = (
    "bed",
    "books",
    "ceiling",
    "chair",
    "floor",
    "furniture",
    "objects",
    "picture",
    "sofa",
    "table",
    "tv",
    "wall",
    "window",
)
"""The 13-class NYUv2 labels (ankurhanda/nyuv2-meta-data), ids 0..12 as in MTAN's files."""

CITYSCAPES_7_CLASSES: tuple[str, ...] = (
    "flat",
    "construction",
    "object",
    "nature",
    "sky",
    "human",
    "vehicle",
)
"""Cityscapes' seven categories (cityscapesScripts category ids 1..7, minus 1; void = -1)."""

CITYSCAPES_19_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
"""Cityscapes' 19 evaluation classes (train ids 0..18)."""

TASKS: tuple[str, ...] = ("seg", "depth", "normal")
"""The dense tasks a loader can return, besides ``"image"``."""

IGNORE_INDEX = -100
"""What the files' negative labels become (PyTorch's cross-entropy default)."""

_LAYOUT = (
    "ROOT/{train,val}/{image,label,depth,normal}/<i>.npy (image (H, W, 3) in [0, 1], label "
    "(H, W) with -1 = ignore, depth (H, W, 1) with 0 = invalid, normal (H, W, 3))"
)
_WHERE = (
    "get the pre-processed data from the links in the READMEs of https://github.com/lorenmt/mtan "
    "('Download our pre-processed NYUv2 dataset', 'pre-processing CityScapes dataset') or "
    "https://github.com/median-research-group/LibMTL (examples/nyu, examples/cityscapes)"
)
_NAME = re.compile(r"^(\d+)\.npy$")


def _indices(folder: Path) -> list[int]:
    """The ``<i>`` of ``folder/<i>.npy`` in numeric order (10 after 9, not after 1)."""
    names = [p.name for p in folder.iterdir() if p.suffix == ".npy"]
    odd = sorted(n for n in names if not _NAME.match(n))
    if odd:
        raise ValueError(
            f"{folder}: files must be named <i>.npy with an integer i; found {odd[:5]}"
        )
    return sorted(int(_NAME.match(n).group(1)) for n in names)  # type: ignore[union-attr]


_SHAPES: dict[str, tuple[str, tuple[tuple[int, int | None], ...]]] = {
    "image": ("(H, W, 3)", ((3, 3),)),
    "seg": ("(H, W)", ((2, None),)),
    "depth": ("(H, W, 1) or (H, W)", ((3, 1), (2, None))),
    "normal": ("(H, W, 3)", ((3, 3),)),
}
"""Per array: the expected shape in words, and the accepted (ndim, last dimension) pairs."""


def _read(path: Path, key: str) -> np.ndarray:
    array = np.load(path, allow_pickle=False)
    expected, accepted = _SHAPES[key]
    for ndim, last in accepted:
        if array.ndim == ndim and (last is None or array.shape[-1] == last):
            return array
    raise ValueError(f"{path}: expected shape {expected}, got {array.shape}")


def _to_tensors(
    arrays: dict[str, np.ndarray], path: Path, num_classes: int | None
) -> dict[str, Tensor]:
    """One sample's arrays → ``(C, H, W)`` float32 tensors and ``(H, W)`` int64 labels."""
    out: dict[str, Tensor] = {}
    for key, array in arrays.items():
        if key == "seg":
            labels = torch.from_numpy(np.asarray(array, dtype=np.float64))
            if not bool(torch.all(labels == torch.round(labels))):
                raise ValueError(f"{path}: label holds non-integer class ids")
            labels = labels.long()
            if num_classes is not None and labels.numel() and int(labels.max()) >= num_classes:
                raise ValueError(
                    f"{path}: label id {int(labels.max())} >= {num_classes} classes "
                    "(wrong label folder for this dataset?)"
                )
            out[key] = torch.where(labels < 0, IGNORE_INDEX, labels)
        else:
            array = array[..., None] if array.ndim == 2 else array
            out[key] = torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 0))).float()
    return out


def _resize_masked(values: Tensor, valid: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Bilinear resize of ``values (C, H, W)`` over the ``valid (H, W)`` pixels only.

    A new pixel is valid when at least half its interpolation weight falls on valid
    pixels; its value is the valid-weighted average (invalid pixels never leak in).
    """
    weight = F.interpolate(
        valid[None, None].float(), size=size, mode="bilinear", align_corners=False
    )
    summed = F.interpolate(
        (values * valid).unsqueeze(0), size=size, mode="bilinear", align_corners=False
    )
    keep = weight[0, 0] >= 0.5
    return summed[0] / weight[0].clamp_min(1e-12) * keep, keep


def _resize(sample: dict[str, Tensor], size: tuple[int, int]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in sample.items():
        if key == "image":
            out[key] = F.interpolate(value[None], size=size, mode="bilinear", align_corners=False)[
                0
            ]
        elif key == "seg":
            out[key] = F.interpolate(value[None, None].float(), size=size, mode="nearest")[
                0, 0
            ].long()
        elif key == "depth":
            out[key], _ = _resize_masked(value, value[0] > 0, size)
        else:
            normal, keep = _resize_masked(value, value.norm(dim=0) > 0.5, size)
            out[key] = normal / normal.norm(dim=0, keepdim=True).clamp_min(1e-12) * keep
    return out


def _check_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise ValueError(f"size must be (height, width) of positive ints, got {size!r}")
    return (int(size[0]), int(size[1]))


def load_npy_dense(
    root: str | os.PathLike[str],
    split: str,
    *,
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
    size: tuple[int, int] | None = None,
    label_dir: str = "label",
    num_classes: int | None = None,
) -> dict[str, Tensor]:
    """Read ``ROOT/split/{image,label,depth,normal}/<i>.npy`` in numeric order of ``i``.

    Returns ``{"image": (N, 3, H, W) float32, "seg": (N, H, W) int64 (negative ids →
    -100), "depth": (N, 1, H, W) float32, "normal": (N, 3, H, W) float32}`` with the
    tasks asked for (``tasks`` ⊆ ``("seg", "depth", "normal")``; ``None``: every task
    whose folder exists). ``limit`` reads the first ``limit`` images; ``size=(h, w)``
    resizes: bilinear for image, depth and normals (over valid pixels only, so
    invalid depth stays 0; normals renormalised), nearest for labels. ``label_dir``
    names the label folder (Cityscapes: ``label_7``); ``num_classes`` checks the ids.
    """
    root = Path(root)
    if split not in ("train", "val"):
        raise ValueError(
            f"split must be 'train' or 'val' (val is the papers' test set), got {split!r}"
        )
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} not found; expected {_LAYOUT}; {_WHERE}")
    base = root / split
    if not base.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"{base} not found (folders in {root}: {present}); expected {_LAYOUT}"
        )
    folders = {"seg": label_dir, "depth": "depth", "normal": "normal"}
    if tasks is None:
        tasks = [t for t in TASKS if (base / folders[t]).is_dir()]
    else:
        tasks = list(tasks)
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; choose from {list(TASKS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    size = _check_size(size)

    subfolders = {"image": "image", **{t: folders[t] for t in tasks}}
    indices: dict[str, list[int]] = {}
    for key, name in subfolders.items():
        folder = base / name
        if not folder.is_dir():
            present = sorted(p.name for p in base.iterdir() if p.is_dir())
            raise FileNotFoundError(
                f"{folder} not found (folders in {base}: {present}); task {key!r} needs it"
            )
        indices[key] = _indices(folder)
    order = indices["image"]
    if not order:
        raise FileNotFoundError(f"{base / 'image'} holds no <i>.npy files; expected {_LAYOUT}")
    for key, found in indices.items():
        if found != order:
            missing = sorted(set(order) - set(found))[:5]
            extra = sorted(set(found) - set(order))[:5]
            raise ValueError(
                f"{base / subfolders[key]} holds {len(found)} files but {base / 'image'} holds "
                f"{len(order)}; missing indices {missing}, extra {extra}"
            )
    order = order[:limit] if limit is not None else order

    result: dict[str, Tensor] = {}
    first_path = None
    for n, index in enumerate(order):
        arrays: dict[str, np.ndarray] = {}
        for key, name in subfolders.items():
            path = base / name / f"{index}.npy"
            arrays[key] = _read(path, key)
        path = base / "image" / f"{index}.npy"
        heights_widths = {key: a.shape[:2] for key, a in arrays.items()}
        if len(set(heights_widths.values())) > 1:
            raise ValueError(
                f"sample {index} of {base}: height/width differ across tasks: {heights_widths}"
            )
        sample = _to_tensors(
            arrays, base / subfolders.get("seg", "image") / f"{index}.npy", num_classes
        )
        if size is not None:
            sample = _resize(sample, size)
        if not result:
            result = {
                k: torch.empty((len(order), *v.shape), dtype=v.dtype) for k, v in sample.items()
            }
            first_path = path
        elif sample["image"].shape != result["image"].shape[1:]:
            raise ValueError(
                f"{path}: image is {tuple(sample['image'].shape[1:])} but {first_path} is "
                f"{tuple(result['image'].shape[2:])}; pass size=(h, w) to resize them alike"
            )
        for key, value in sample.items():
            result[key][n] = value
    return result


def load_nyuv2(
    root: str | os.PathLike[str], split: str = "train", **kwargs: Any
) -> tuple[dict[str, Tensor], list[str]]:
    """MTAN's pre-processed 13-class NYUv2: ``(tensors, NYUV2_CLASSES)``; options of ``load_npy_dense``."""
    if "label_dir" in kwargs or "num_classes" in kwargs:
        raise TypeError(
            "load_nyuv2 fixes label_dir and num_classes; use load_npy_dense to change them"
        )
    tensors = load_npy_dense(root, split, num_classes=len(NYUV2_CLASSES), **kwargs)
    return tensors, list(NYUV2_CLASSES)


def load_cityscapes(
    root: str | os.PathLike[str], split: str = "train", *, classes: int = 7, **kwargs: Any
) -> tuple[dict[str, Tensor], list[str]]:
    """Pre-processed Cityscapes (seg + inverse depth): ``(tensors, class names)``.

    Labels come from ``label_<classes>`` (MTAN's release) or, for 7 classes, from
    ``label`` when that folder is absent (LibMTL's copy). ``tasks`` defaults to
    ``("seg", "depth")``; Cityscapes has no normals.
    """
    names = {7: CITYSCAPES_7_CLASSES, 19: CITYSCAPES_19_CLASSES}
    if classes not in names:
        raise ValueError(f"classes must be one of {sorted(names)}, got {classes!r}")
    if "label_dir" in kwargs or "num_classes" in kwargs:
        raise TypeError("load_cityscapes sets label_dir and num_classes from classes=")
    tasks = kwargs.pop("tasks", None)
    tasks = ("seg", "depth") if tasks is None else tuple(tasks)
    if "normal" in tasks:
        raise ValueError("Cityscapes has no surface normals; choose tasks from ('seg', 'depth')")
    label_dir = f"label_{classes}"
    base = Path(root) / split
    if classes == 7 and not (base / label_dir).is_dir() and (base / "label").is_dir():
        label_dir = "label"
    tensors = load_npy_dense(
        root, split, tasks=tasks, label_dir=label_dir, num_classes=classes, **kwargs
    )
    return tensors, list(names[classes])
