"""TorchScript export of a multi-task model, optionally frozen for CPU inference.

Re-exported by :mod:`cut_plugin` (and :mod:`cut_plugin.export`); import from there::

    export_torchscript(compact, (x,), "compact.pt", freeze=True)
    runtime = torch.jit.optimize_for_inference(torch.jit.load("compact.pt"))
    runtime(x)  # {task: Tensor}

- Tracing (``torch.jit.trace(strict=False)``, dict outputs) records the operations
  the example runs: data-dependent control flow is frozen to the example's branch
  (torch warns with a ``TracerWarning``). ``torch.jit.script`` fails on
  Torch-Pruning's ``GraphModule``s and on ``MergedNetwork``.
- ``freeze=True`` saves ``torch.jit.freeze`` of the trace: parameters become
  constants and each Conv → BatchNorm pair is folded into one Conv. Its outputs are
  checked against the eager model on the example inputs before the file is written.
- ``torch.jit.optimize_for_inference`` (oneDNN pre-packed convolutions, Conv+ReLU
  fusion) is applied after loading: its module cannot be saved — ``torch.jit.load``
  of it fails with "required keyword attribute 'value' is undefined" (torch 2.13).
  Measured by the ``latency_scaling`` benchmark part (runtime ``torchscript``, quick
  suite, one CPU thread, batch 64): the loaded, optimised module ran the compact
  ResNet-18-style models 1.5× / 1.7× / 1.25× faster than eager PyTorch at widths
  16 / 32 / 64; in two later runs 1.5–2.1× at width 16 and 0.86–1.06× at width 64.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from cut_plugin.export_checks import (
    TaskOutputs,
    check_export_inputs,
    check_model,
    check_path,
    eval_copy,
    exported_task_names,
    output_difference,
    quiet_exporters,
)
from cut_plugin.vocabulary import as_task_outputs

__all__ = ["FREEZE_ATOL", "FREEZE_RTOL", "export_torchscript"]

FREEZE_ATOL = 1e-5
FREEZE_RTOL = 1e-4
"""How far a frozen module's outputs may be from the eager model's (folding BatchNorm
into a Conv reorders float arithmetic): ``|frozen − eager| <= atol + rtol·|eager|``."""


def export_torchscript(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor],
    path: str | os.PathLike[str],
    *,
    task_names: Sequence[str] | None = None,
    freeze: bool = False,
) -> None:
    """Trace ``model`` and save it to ``path``; ``torch.jit.load(path)(*inputs)`` returns ``{task: Tensor}``.

    A tuple output needs ``task_names``; for a dict output they pick and order a
    subset of its keys. ``freeze=True`` saves the frozen trace (BatchNorm folded
    into the preceding Conv, parameters as constants: an inference-only module),
    after checking it against the model on ``example_inputs``; load it and call
    ``torch.jit.optimize_for_inference`` for the fastest CPU module.
    """
    check_model(model)
    if not isinstance(freeze, bool):
        raise TypeError(f"freeze must be True or False, got {freeze!r}")
    target = check_path(path)
    frozen = eval_copy(model)
    inputs = check_export_inputs(example_inputs, frozen)
    with torch.no_grad():
        output = frozen(*inputs)
    tasks = exported_task_names(output, task_names)
    module = frozen
    if not (isinstance(output, Mapping) and list(output) == tasks):
        module = TaskOutputs(frozen, tasks, as_dict=True).eval()
    with quiet_exporters(), torch.no_grad():
        traced = torch.jit.trace(module, inputs, strict=False)
        if freeze:
            traced = torch.jit.freeze(traced.eval())
            _check_frozen(traced(*inputs), as_task_outputs(output, tasks), tasks)
        torch.jit.save(traced, target)


def _check_frozen(
    got: Mapping[str, Tensor], expected: Mapping[str, Tensor], tasks: list[str]
) -> None:
    """Raise naming the task whose frozen output left the tolerance of the eager one."""
    for task in tasks:
        if output_difference(got[task], expected[task], FREEZE_RTOL) > FREEZE_ATOL:
            difference = output_difference(got[task], expected[task])
            raise RuntimeError(
                f"torch.jit.freeze changed task {task!r}'s output by {difference:.3g} on the "
                f"example inputs (beyond {FREEZE_ATOL:g} + {FREEZE_RTOL:g}·|value|); export "
                "with freeze=False"
            )
