"""What the exporters share: argument checks, the eval-mode copy, task-named outputs, quiet export.

Used by :mod:`cut_plugin.export` (ONNX) and :mod:`cut_plugin.torchscript`; import the
exporters from :mod:`cut_plugin`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from cut_plugin.vocabulary import as_example_inputs, as_task_outputs, check_tasks

__all__ = [
    "QUIET_WARNINGS",
    "TaskOutputs",
    "check_export_inputs",
    "check_model",
    "check_path",
    "eval_copy",
    "exported_task_names",
    "output_difference",
    "quiet_exporters",
]

QUIET_WARNINGS = (  # torch's own notices, not about the user's model
    r"`torch\.jit\.\w+` is deprecated",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"You are using the legacy TorchScript-based ONNX export",
    r"The feature will be removed",
    r"# The axis name: .* will not be used",
)


def check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module) or isinstance(model, torch.jit.ScriptModule):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def check_path(path: Any, *, must_exist: bool = False) -> str:
    """``path`` as a string: a file whose folder exists (and which exists, with ``must_exist``)."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str) or not text:
        raise ValueError(f"path must be a non-empty file path, got {path!r}")
    if os.path.isdir(text):
        raise IsADirectoryError(f"path {text!r} is a directory; give a file path")
    if must_exist and not os.path.isfile(text):
        raise FileNotFoundError(f"no such file {text!r}; export it first with export_onnx")
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"the folder of {text!r} does not exist: create {folder!r} first")
    return text


def check_export_inputs(example_inputs: Any, model: nn.Module) -> tuple[Tensor, ...]:
    """Example inputs as a tuple of Tensors on the model's device (floating ones in its dtype).

    Detached: an exported graph must not record the caller's autograd history.
    """
    inputs = as_example_inputs(example_inputs, model, tensors_only=True)
    return tuple(x.detach() for x in inputs)


def eval_copy(model: nn.Module) -> nn.Module:
    """An eval-mode deep copy without gradients, so that exporting cannot change the caller's model."""
    frozen = copy.deepcopy(model).eval()
    for parameter in frozen.parameters():
        parameter.requires_grad_(False)
    return frozen


def exported_task_names(output: Any, task_names: Sequence[str] | None) -> list[str]:
    """The exported tasks in order: ``task_names`` (for a dict output, a subset of its keys) or all."""
    names = None if task_names is None else check_tasks(task_names, name="task_names")
    if isinstance(output, Mapping):
        keys = list(output)
        if names is None:
            return check_tasks(keys, name="the model's output keys")
        check_tasks(names, keys, name="task_names")
        return names
    return list(as_task_outputs(output, names))


class TaskOutputs(nn.Module):
    """``model(*inputs)`` as a tuple (ONNX) or a dict (TorchScript) of ``tasks``, in order."""

    def __init__(self, model: nn.Module, tasks: Sequence[str], *, as_dict: bool) -> None:
        super().__init__()
        self.model = model
        self.tasks = tuple(tasks)
        self.as_dict = as_dict

    def forward(self, *inputs: Tensor) -> Any:
        outputs = as_task_outputs(self.model(*inputs), self.tasks)
        if self.as_dict:
            return {task: outputs[task] for task in self.tasks}
        return tuple(outputs[task] for task in self.tasks)


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """Silence the exporters' deprecation notices and torch.onnx's optional-op log lines.

    Tracer warnings (control flow frozen to the example's branch) are kept.
    """
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for pattern in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        logger.setLevel(level)


def output_difference(onnx_value: Tensor, torch_value: Tensor, rtol: float = 0.0) -> float:
    """Max of ``|a - b| - rtol·|b|`` (NaN on one side only: infinite); rtol 0: max abs difference."""
    a, b = onnx_value.double(), torch_value.double()
    diff = ((a - b).abs() - rtol * b.abs()).nan_to_num(nan=math.inf)
    diff = torch.where((torch.isnan(a) & torch.isnan(b)) | (a == b), 0.0, diff)
    return float(diff.max()) if diff.numel() else 0.0
