"""Edge export: a multi-task model → ONNX (named per-task outputs) or TorchScript, and a check.

Works on any model returning ``{task: Tensor}`` (or a tuple with ``task_names``):
CUT-compact ``torch.fx.GraphModule``s from ``adapters.torch_pruning.cut_prune``,
PAM/MTZ ``MergedNetwork``s and the benchmark zoo. The caller's model is never
touched: every export works on an eval-mode deep copy::

    names = export_onnx(compact, (x,), "compact.onnx")      # ["seg", "depth"]
    error = check_onnx(compact, "compact.onnx", (x,))       # max |onnxruntime − torch|
    export_torchscript(compact, (x,), "compact.pt")         # torch.jit.load(...)(x) -> dict

Implementation notes:

- ONNX exporter: ``exporter="dynamo"`` (default; ``torch.onnx.export(dynamo=True)``
  on ``torch.export``) or ``"torchscript"`` (legacy, ``dynamo=False``). Both match
  PyTorch to ~1e-7 on the toy nets, CUT-compact GraphModules, PAM/MTZ merged
  networks and the zoo, at batch sizes other than the example's. Dynamo is the
  robust default on torch 2.13: torch's maintained path (the legacy one warns it
  will be removed); data-dependent control flow fails loudly instead of being
  frozen to the example's branch; a batch axis the model fixes
  (``x.reshape(4, -1)``) is an error here (torch.onnx would silently keep it
  static; legacy ``dynamic_axes`` only renames it, and inference fails later).
  Costs: it needs ``onnxscript``, opset >= 18, and seconds per export.
- TorchScript: :mod:`cut_plugin.torchscript` (a trace with dict outputs; ``freeze=True``
  folds BatchNorm into the Conv before it for CPU inference).
- onnxruntime's CPU kernels have no float64 ``Conv``: export ``model.float()``.
- The ONNX file is self-contained (no ``.data`` side file) below 1.5 GiB of weights.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

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
from cut_plugin.torchscript import export_torchscript
from cut_plugin.vocabulary import as_task_outputs, check_choice, check_number, model_device_dtype

__all__ = ["EXPORTERS", "check_onnx", "export_onnx", "export_torchscript"]

Exporter = Literal["dynamo", "torchscript"]
EXPORTERS: tuple[str, ...] = ("dynamo", "torchscript")

_EXTERNAL_DATA_BYTES = int(1.5 * 2**30)
_DYNAMO_MIN_OPSET = 18
_EDGE_HINT = 'pip install "cut-pam[edge]"'


def _require(module: str, purpose: str) -> Any:
    """Import an optional dependency, or raise ImportError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{purpose} needs the {module!r} package: {_EDGE_HINT}") from error


def _reason(error: BaseException) -> str:
    """The first line of the innermost cause of ``error`` (the exporter wraps the real reason)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _check_dynamic_batch(inputs: tuple[Tensor, ...]) -> None:
    sizes = [x.shape[0] if x.dim() else None for x in inputs]
    if None in sizes or len(set(sizes)) != 1:
        shapes = [tuple(x.shape) for x in inputs]
        raise ValueError(
            "dynamic_batch=True needs every example input to have the same first (batch) "
            f"dimension; got shapes {shapes}; pass dynamic_batch=False for a fixed-shape export"
        )


def _check_opset(opset: Any, exporter: str) -> int | None:
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 7):
        raise ValueError(
            f"opset must be None (the exporter's default) or an int >= 7, got {opset!r}"
        )
    if exporter == "dynamo" and opset is not None and opset < _DYNAMO_MIN_OPSET:
        raise ValueError(
            f"opset={opset}: the dynamo exporter writes opset >= {_DYNAMO_MIN_OPSET}; "
            "use exporter='torchscript' for older opsets"
        )
    return opset


def _export_dynamo(
    wrapper: TaskOutputs,
    inputs: tuple[Tensor, ...],
    target: str,
    *,
    dynamic_batch: bool,
    options: dict[str, Any],
) -> None:
    """``torch.onnx.export(dynamo=True)``, then check the batch axis stayed free before saving."""
    _require("onnxscript", "export_onnx(exporter='dynamo')")
    name = type(wrapper.model).__name__
    dynamic: Any = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic = (tuple({0: batch} for _ in inputs),)  # one entry: forward(*inputs)
    try:
        with quiet_exporters():
            program: Any = torch.onnx.export(  # an ONNXProgram with dynamo=True
                wrapper, inputs, None, dynamo=True, dynamic_shapes=dynamic, **options
            )
    except Exception as error:
        raise RuntimeError(
            f"torch.onnx.export(dynamo=True) could not export {name}: {_reason(error)}; "
            "if torch.export cannot capture the model try exporter='torchscript' "
            "(traced: data-dependent control flow is frozen to the example's branch)"
        ) from error
    opset, written = options["opset_version"], program.model.opset_imports.get("")
    if opset is not None and written != opset:  # torch.onnx logs a failed conversion, goes on
        raise RuntimeError(f"the dynamo exporter wrote opset {written}, not opset={opset}")
    if dynamic_batch:
        # torch.onnx silently specialises a batch axis the model fixes (x.reshape(4, -1))
        fixed = [
            v.name for v in program.model.graph.inputs if v.shape and isinstance(v.shape[0], int)
        ]
        if fixed:
            raise RuntimeError(
                f"{name} fixes the batch size: ONNX input(s) {fixed} kept a static first "
                "dimension; remove the hard-coded batch size from the model, or pass "
                "dynamic_batch=False for a fixed-shape export"
            )
    size = sum(p.numel() * p.element_size() for p in wrapper.parameters())
    program.save(target, external_data=size > _EXTERNAL_DATA_BYTES)


def export_onnx(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor],
    path: str | os.PathLike[str],
    *,
    task_names: Sequence[str] | None = None,
    opset: int | None = None,
    dynamic_batch: bool = True,
    exporter: Exporter = "dynamo",
) -> list[str]:
    """Write ``model`` to the ONNX file ``path``; return its output names, the task names in order.

    ``example_inputs``: a Tensor or a tuple of Tensors passed positionally (ONNX
    inputs ``input`` or ``input_0, input_1, …``). A dict output becomes one
    named output per task (``task_names`` may pick and order a subset of its
    keys); a tuple output needs ``task_names``. ``dynamic_batch`` makes the first
    dimension of every input and output a free ``batch`` axis. ``opset=None`` is
    the exporter's default. ``exporter``: ``"dynamo"`` or ``"torchscript"`` (see
    the module's notes).
    """
    check_model(model)
    check_choice("exporter", exporter, EXPORTERS)
    if not isinstance(dynamic_batch, bool):
        raise TypeError(f"dynamic_batch must be a bool, got {dynamic_batch!r}")
    opset = _check_opset(opset, exporter)
    target = check_path(path)
    frozen = eval_copy(model)
    inputs = check_export_inputs(example_inputs, frozen)
    if dynamic_batch:
        _check_dynamic_batch(inputs)
    with torch.no_grad():
        output = frozen(*inputs)
    tasks = exported_task_names(output, task_names)
    input_names = ["input"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]
    clash = sorted(set(tasks) & set(input_names))
    if clash:
        raise ValueError(f"task name(s) {clash} clash with the ONNX input names {input_names}")
    wrapper = TaskOutputs(frozen, tasks, as_dict=False).eval()
    common: dict[str, Any] = {
        "input_names": input_names,
        "output_names": tasks,
        "opset_version": opset,
        "verbose": False,
    }
    if exporter == "dynamo":
        _export_dynamo(wrapper, inputs, target, dynamic_batch=dynamic_batch, options=common)
    else:
        _require("onnx", "export_onnx(exporter='torchscript')")
        axes = None
        if dynamic_batch:
            values = as_task_outputs(output, tasks)
            axes = {name: {0: "batch"} for name in input_names}
            axes.update({task: {0: "batch"} for task in tasks if values[task].dim()})
        with quiet_exporters(), torch.no_grad():
            torch.onnx.export(wrapper, inputs, target, dynamo=False, dynamic_axes=axes, **common)
    return tasks


def check_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: Tensor | Sequence[Tensor],
    *,
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> float:
    """Max absolute difference between onnxruntime and PyTorch over every output of ``path``.

    Runs the ONNX file (one CPU thread) and an eval-mode copy of ``model`` on
    ``example_inputs``; raises ``ValueError`` naming the first task with an element
    beyond ``atol + rtol * |PyTorch value|`` (as ``torch.allclose``: large logits
    get a relative tolerance), or a shape mismatch.
    """
    check_model(model)
    atol = check_number("atol", atol, low=0.0)
    rtol = check_number("rtol", rtol, low=0.0)
    source = check_path(path, must_exist=True)
    ort = _require("onnxruntime", "check_onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as error:
        hint = ""
        if model_device_dtype(model)[1] == torch.float64:
            hint = "; onnxruntime's CPU kernels lack float64 Conv: export model.float()"
        raise RuntimeError(f"onnxruntime cannot load {source!r}: {error}{hint}") from error
    frozen = eval_copy(model)
    inputs = check_export_inputs(example_inputs, frozen)
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise ValueError(f"{source!r} takes {len(names)} input(s) {names}, got {len(inputs)}")
    tasks = [o.name for o in session.get_outputs()]
    results = session.run(tasks, {n: x.cpu().numpy() for n, x in zip(names, inputs, strict=True)})
    with torch.no_grad():
        output = frozen(*inputs)
    expected = dict(output) if isinstance(output, Mapping) else as_task_outputs(output, tasks)
    worst = 0.0
    for task, result in zip(tasks, results, strict=True):
        if task not in expected:
            raise ValueError(f"{source!r} has output {task!r}, which the model does not return")
        reference = expected[task].detach().cpu()
        value = torch.from_numpy(result)
        if tuple(value.shape) != tuple(reference.shape):
            raise ValueError(
                f"task {task!r}: onnxruntime gives shape {tuple(value.shape)}, "
                f"PyTorch {tuple(reference.shape)}"
            )
        difference = output_difference(value, reference)
        if not output_difference(value, reference, rtol) <= atol:
            raise ValueError(
                f"task {task!r}: onnxruntime and PyTorch differ by {difference:.3g}, beyond "
                f"atol + rtol * |value| (atol={atol:g}, rtol={rtol:g}); raise atol or rtol if "
                "the export is right"
            )
        worst = max(worst, difference)
    return worst
