"""Where a benchmark part runs (``--device cpu|cuda``): the one place that names devices.

The rule every part follows: the **model** goes to the device; **data** is made
and kept on the host (the CPU), whatever torch's default device is, and each
batch moves to the model's device where it is used (the library's loops,
``cut_plugin.train_tasks`` / ``finetune`` / ``score_tasks`` and PAM's merges, do
that themselves); **metrics** are computed on the host from outputs brought back
with :func:`on_host`. New models are built on the host and then moved, so a seed
gives the same initial weights on every device. **Latencies** are CPU latencies
(the protocol's edge devices): :func:`benchmarks.measure.latency_ms` times a CPU
copy of a model that lives elsewhere.

A part that can run on an accelerator lists it in ``Part.devices``; the others
(latency, edge, the CPU memory probes) run on the CPU under ``--device cuda``
too, and ``results.json``'s ``run_info.part_devices`` says where each part ran.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from cut_plugin.vocabulary import model_device_dtype, move_to

__all__ = [
    "DEVICES",
    "check_device",
    "cpu_copy",
    "device_kind",
    "forward",
    "host",
    "model_device",
    "on_host",
]

DEVICES: tuple[str, ...] = ("cpu", "cuda")
"""The ``--device`` choices; ``cuda`` may name an index (``cuda:1``) in :func:`check_device`."""


def device_kind(device: Any) -> str:
    """``"cpu"`` or ``"cuda"`` for a ``--device`` value (``cuda:N`` included), or a ``ValueError``."""
    kind = device.split(":", 1)[0] if isinstance(device, str) else None
    if kind not in DEVICES:
        raise ValueError(f"device must be one of {list(DEVICES)} (or 'cuda:N'), got {device!r}")
    return kind


def check_device(device: Any) -> torch.device:
    """``device`` as a ``torch.device`` this machine has, or a ``ValueError`` naming the fix."""
    device_kind(device)
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device {device!r} is not a torch device: {error}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r}: torch.cuda.is_available() is False on this machine "
                f"(torch {torch.__version__}: a CPU build, or no GPU visible); use --device cpu"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return resolved


def host() -> torch.device:
    """A context manager (``with host(): ...``) that makes new tensors and modules on the CPU."""
    return torch.device("cpu")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without any)."""
    return model_device_dtype(model)[0]


def forward(model: nn.Module, inputs: Tensor) -> Any:
    """``model(inputs)`` with the inputs on the model's device (floating ones in its dtype)."""
    return model(move_to(inputs, *model_device_dtype(model)))


def on_host(value: Any) -> Any:
    """``value`` with every tensor on the CPU (mappings, lists and tuples followed)."""
    if isinstance(value, Tensor):
        return value.cpu()
    if isinstance(value, Mapping):
        return {k: on_host(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(on_host(v) for v in value)
    return value


def cpu_copy(model: nn.Module) -> nn.Module:
    """``model`` itself when it is on the CPU, else a deep copy moved there (for CPU timings)."""
    if model_device(model).type == "cpu":
        return model
    return copy.deepcopy(model).cpu()
