"""Dense multi-task data as :class:`~benchmarks.data.TaskData`: losses, scores and Δm.

Tasks ``seg`` (per-pixel classes, ``IGNORE_INDEX`` skipped), ``depth`` (camera
z, 0 = invalid) and ``normal`` (unit vectors, 0 = invalid), from

- ``scenes``: the procedural scenes of :mod:`benchmarks.scenes`, train/val/test
  drawn from different seeds of the generator (so never the same image);
- ``nyuv2`` / ``cityscapes``: the preprocessed ``.npy`` folders of MTAN and
  LibMTL (:mod:`benchmarks.dense_formats`); their ``val`` folder is the test
  split and a held-out part of ``train`` the validation split.

The losses are those of MTAN's training loop: cross-entropy, L1 on the valid
depth pixels, and 1 − cosine on the valid normal pixels (the prediction
normalised). :func:`dense_scores` gives every metric of
:mod:`benchmarks.dense_metrics`; :func:`primary` the one Δm uses per task.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.data import IGNORE_INDEX, Split, TaskData, batches
from benchmarks.dense_metrics import PRIMARY, delta_m, metric_for
from benchmarks.devices import forward, on_host

__all__ = [
    "DENSE_LOSSES",
    "DENSE_TASKS",
    "dense_scores",
    "depth_loss",
    "load_dense",
    "normal_loss",
    "primary",
    "seg_loss",
    "task_delta_m",
]

DENSE_TASKS = {"seg": "segmentation", "depth": "depth", "normal": "normal"}
"""The dense tasks' names → their kind (``TaskData.task_types``)."""

_KIND = {"segmentation": "segmentation", "depth": "depth", "normal": "normal"}


def seg_loss(output: Tensor, target: Tensor) -> Tensor:
    """Per-pixel cross-entropy over ``(N, C, H, W)`` logits, skipping ``IGNORE_INDEX``."""
    return F.cross_entropy(output, target, ignore_index=IGNORE_INDEX)


def depth_loss(output: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over the valid pixels (``target > 0``)."""
    valid = target > 0
    count = int(valid.sum())
    if count == 0:
        return output.sum() * 0.0
    # A masked sum, not boolean indexing: same value, 6x faster forward on CPU.
    return torch.where(valid, (output - target).abs(), 0.0).sum() / count


def normal_loss(output: Tensor, target: Tensor) -> Tensor:
    """1 − cosine between the normalised prediction and the target, over valid pixels."""
    valid = (target * target).sum(dim=1) > 0.25  # ‖target‖ > 0.5 (torch's norm is slow here)
    if not bool(valid.any()):
        return output.sum() * 0.0
    unit = output * torch.rsqrt((output * output).sum(dim=1, keepdim=True).clamp(min=1e-24))
    cosine = (unit * target).sum(dim=1)
    return 1.0 - cosine[valid].mean()


DENSE_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "segmentation": seg_loss,
    "depth": depth_loss,
    "normal": normal_loss,
}
"""Task kind → loss ``(output, target) -> scalar``."""


def _kind(data: TaskData, task: str) -> str:
    kind = data.task_types.get(task, "multiclass")
    return _KIND.get(kind, "classification")


def primary(data: TaskData, task: str) -> tuple[str, bool]:
    """``(metric name, higher is better)`` of ``task``'s primary metric (BENCHMARKS.md)."""
    return PRIMARY[_kind(data, task)]


@torch.no_grad()
def dense_scores(
    model: nn.Module,
    data: TaskData,
    split: Split | None = None,
    *,
    tasks: Sequence[str] | None = None,
    batch_size: int = 64,
) -> dict[str, dict[str, float]]:
    """Every metric of every task in ``tasks`` (default: the model's outputs) on ``split``.

    ``split`` defaults to ``data.test``. The model's train/eval mode is restored.
    """
    split = data.test if split is None else split
    was_training = model.training
    model.eval()
    metrics: dict[str, Any] = {}
    try:
        for inputs, targets in batches(split, batch_size, shuffle=False):
            outputs = on_host(forward(model, inputs))
            names = [t for t in (tasks or outputs) if t in outputs and t in targets]
            for task in names:
                kind = _kind(data, task)
                if task not in metrics:
                    options = (
                        {"num_classes": data.num_classes[task]} if kind == "segmentation" else {}
                    )
                    metrics[task] = metric_for(kind, **options)  # type: ignore[arg-type]
                metrics[task].update(outputs[task], targets[task])
    finally:
        model.train(was_training)
    return {task: metric.compute() for task, metric in metrics.items()}


def task_delta_m(
    data: TaskData,
    scores: Mapping[str, Mapping[str, float]],
    dense: Mapping[str, Mapping[str, float]],
    tasks: Iterable[str],
) -> float:
    """Δm of ``scores`` against the ``dense`` model's, over ``tasks``' primary metrics."""
    names = list(tasks)
    keys = {t: primary(data, t) for t in names}
    return delta_m(
        {t: scores[t][keys[t][0]] for t in names},
        {t: dense[t][keys[t][0]] for t in names},
        {t: keys[t][1] for t in names},
    )


# --------------------------------------------------------------------------- loading


def _split(tensors: Mapping[str, Tensor], tasks: Sequence[str]) -> Split:
    return Split(tensors["image"], {t: tensors[t] for t in tasks})


def _tasks(tasks: Sequence[str], available: Sequence[str]) -> tuple[str, ...]:
    if isinstance(tasks, str) or not tasks:
        raise TypeError(f"tasks must be a non-empty list from {list(available)}, got {tasks!r}")
    unknown = [t for t in tasks if t not in available]
    if unknown or len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks={list(tasks)}: each once, from {list(available)}")
    return tuple(tasks)


def scenes_data(
    *,
    tasks: Sequence[str] = ("seg", "depth", "normal"),
    size: int = 64,
    train: int = 2000,
    val: int = 300,
    test: int = 500,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = ".cache/cut-pam/scenes",
    **options: Any,
) -> TaskData:
    """Procedural scenes (:func:`benchmarks.scenes.make_scenes`) as a dense multi-task dataset.

    The three splits come from seeds ``100·seed + 1/2/3`` of the generator.
    ``options`` go to ``make_scenes`` (``texture``, ``noise``, object counts).
    """
    from benchmarks.scenes import make_scenes

    names = _tasks(tasks, list(DENSE_TASKS))
    for name, n in (("train", train), ("val", val), ("test", test)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive number of images, got {n!r}")
    made = [
        make_scenes(n, size=size, seed=100 * seed + k, cache_dir=cache_dir, **options)
        for k, n in ((1, train), (2, val), (3, test))
    ]
    classes = made[0].classes

    def split(scenes: Any) -> Split:
        tensors = {
            "image": scenes.image,
            "seg": scenes.seg,
            "depth": scenes.depth,
            "normal": scenes.normal,
        }
        return _split(tensors, names)

    width = {"seg": len(classes), "depth": 1, "normal": 3}
    config = {
        "kind": "scenes", "tasks": list(names), "size": size, "train": train, "val": val,
        "test": test, "seed": seed, "generator": made[0].config, "classes": list(classes),
    }  # fmt: skip
    return TaskData(
        "scenes",
        split(made[0]),
        split(made[2]),
        {t: width[t] for t in names},
        {t: DENSE_TASKS[t] for t in names},  # type: ignore[misc]
        config,
        split(made[1]),
    )


def npy_data(
    dataset: str,
    *,
    root: str | os.PathLike[str],
    tasks: Sequence[str] | None = None,
    size: tuple[int, int] | None = None,
    val_fraction: float = 0.1,
    limit: int | None = None,
    seed: int = 0,
) -> TaskData:
    """NYUv2 (13 classes; seg, depth, normal) or Cityscapes (7 classes; seg, depth) from ``root``.

    ``root`` holds MTAN/LibMTL's preprocessed ``{train,val}/{image,label,depth,normal}/<i>.npy``.
    Their ``val`` folder is the test split; ``val_fraction`` of ``train`` (by
    ``seed``) is held out for validation.
    """
    from benchmarks.dense_formats import load_cityscapes, load_nyuv2

    loaders = {"nyuv2": (load_nyuv2, ("seg", "depth", "normal")),
               "cityscapes": (load_cityscapes, ("seg", "depth"))}  # fmt: skip
    if dataset not in loaders:
        raise ValueError(f"unknown dense dataset {dataset!r}; choose from {sorted(loaders)}")
    load, available = loaders[dataset]
    names = _tasks(tasks or available, available)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    (train, classes) = load(root, "train", size=size, limit=limit)
    (test, _) = load(root, "val", size=size, limit=limit)
    missing = [t for t in names if t not in train]
    if missing:
        raise ValueError(f"{dataset} under {root} has no {missing} targets; tasks available: "
                         f"{[t for t in available if t in train]}")  # fmt: skip
    full = _split(train, names)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
    held = max(1, round(val_fraction * len(full)))
    width = {"seg": len(classes), "depth": 1, "normal": 3}
    config = {"kind": dataset, "root": os.fspath(root), "tasks": list(names), "size": size,
              "val_fraction": val_fraction, "limit": limit, "seed": seed, "classes": list(classes)}  # fmt: skip
    return TaskData(
        dataset,
        full.select(order[held:]),
        _split(test, names),
        {t: width[t] for t in names},
        {t: DENSE_TASKS[t] for t in names},  # type: ignore[misc]
        config,
        full.select(order[:held]),
    )


def load_dense(key: str, **kwargs: Any) -> TaskData:
    """``scenes`` (:func:`scenes_data`) or ``nyuv2`` / ``cityscapes`` (:func:`npy_data`, ``root=``)."""
    if key == "scenes":
        return scenes_data(**kwargs)
    return npy_data(key, **kwargs)
