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
- TorchScript: ``torch.jit.trace(strict=False)`` (dict outputs); ``torch.jit.script``
  fails on Torch-Pruning's ``GraphModule``s and on ``MergedNetwork``.
- onnxruntime's CPU kernels have no float64 ``Conv``: export ``model.float()``.
- The ONNX file is self-contained (no ``.data`` side file) below 1.5 GiB of weights.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import math
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from cut_plugin.vocabulary import (
    as_example_inputs,
    as_task_outputs,
    check_choice,
    check_number,
    check_tasks,
    model_device_dtype,
)

__all__ = ["EXPORTERS", "check_onnx", "export_onnx", "export_torchscript"]

Exporter = Literal["dynamo", "torchscript"]
EXPORTERS: tuple[str, ...] = ("dynamo", "torchscript")

_EXTERNAL_DATA_BYTES = int(1.5 * 2**30)
_DYNAMO_MIN_OPSET = 18
_EDGE_HINT = 'pip install "cut-pam[edge]"'
_QUIET_WARNINGS = (  # torch's own notices, not about the user's model
    r"`torch\.jit\.\w+` is deprecated",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"You are using the legacy TorchScript-based ONNX export",
    r"The feature will be removed",
    r"# The axis name: .* will not be used",
)


def _require(module: str, purpose: str) -> Any:
    """Import an optional dependency, or raise ImportError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{purpose} needs the {module!r} package: {_EDGE_HINT}") from error


def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module) or isinstance(model, torch.jit.ScriptModule):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _check_path(path: Any, *, must_exist: bool = False) -> str:
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


def _check_inputs(example_inputs: Any, model: nn.Module) -> tuple[Tensor, ...]:
    """Example inputs as a tuple of Tensors on the model's device (floating ones in its dtype).

    Detached: an exported graph must not record the caller's autograd history.
    """
    inputs = as_example_inputs(example_inputs, model, tensors_only=True)
    return tuple(x.detach() for x in inputs)


def _eval_copy(model: nn.Module) -> nn.Module:
    """An eval-mode deep copy without gradients, so that exporting cannot change the caller's model."""
    frozen = copy.deepcopy(model).eval()
    for parameter in frozen.parameters():
        parameter.requires_grad_(False)
    return frozen


def _task_names(output: Any, task_names: Sequence[str] | None) -> list[str]:
    """The exported tasks in order: ``task_names`` (for a dict output, a subset of its keys) or all."""
    names = None if task_names is None else check_tasks(task_names, name="task_names")
    if isinstance(output, Mapping):
        keys = list(output)
        if names is None:
            return check_tasks(keys, name="the model's output keys")
        check_tasks(names, keys, name="task_names")
        return names
    return list(as_task_outputs(output, names))


class _TaskOutputs(nn.Module):
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
def _quiet() -> Iterator[None]:
    """Silence the exporters' deprecation notices and torch.onnx's optional-op log lines.

    Tracer warnings (control flow frozen to the example's branch) are kept.
    """
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for pattern in _QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        logger.setLevel(level)


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
    wrapper: _TaskOutputs,
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
        with _quiet():
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
    _check_model(model)
    check_choice("exporter", exporter, EXPORTERS)
    if not isinstance(dynamic_batch, bool):
        raise TypeError(f"dynamic_batch must be a bool, got {dynamic_batch!r}")
    opset = _check_opset(opset, exporter)
    target = _check_path(path)
    frozen = _eval_copy(model)
    inputs = _check_inputs(example_inputs, frozen)
    if dynamic_batch:
        _check_dynamic_batch(inputs)
    with torch.no_grad():
        output = frozen(*inputs)
    tasks = _task_names(output, task_names)
    input_names = ["input"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]
    clash = sorted(set(tasks) & set(input_names))
    if clash:
        raise ValueError(f"task name(s) {clash} clash with the ONNX input names {input_names}")
    wrapper = _TaskOutputs(frozen, tasks, as_dict=False).eval()
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
        with _quiet(), torch.no_grad():
            torch.onnx.export(wrapper, inputs, target, dynamo=False, dynamic_axes=axes, **common)
    return tasks


def export_torchscript(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor],
    path: str | os.PathLike[str],
    *,
    task_names: Sequence[str] | None = None,
) -> None:
    """Trace ``model`` and save it to ``path``; ``torch.jit.load(path)(*inputs)`` returns ``{task: Tensor}``.

    A tuple output needs ``task_names``; for a dict output they pick and order a
    subset of its keys. Tracing records the operations the example runs:
    data-dependent control flow is frozen (torch warns with a ``TracerWarning``).
    """
    _check_model(model)
    target = _check_path(path)
    frozen = _eval_copy(model)
    inputs = _check_inputs(example_inputs, frozen)
    with torch.no_grad():
        output = frozen(*inputs)
    tasks = _task_names(output, task_names)
    module = frozen
    if not (isinstance(output, Mapping) and list(output) == tasks):
        module = _TaskOutputs(frozen, tasks, as_dict=True).eval()
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(module, inputs, strict=False)
        torch.jit.save(traced, target)


def _difference(onnx_value: Tensor, torch_value: Tensor, rtol: float = 0.0) -> float:
    """Max of ``|a - b| - rtol·|b|`` (NaN on one side only: infinite); rtol 0: max abs difference."""
    a, b = onnx_value.double(), torch_value.double()
    diff = ((a - b).abs() - rtol * b.abs()).nan_to_num(nan=math.inf)
    diff = torch.where((torch.isnan(a) & torch.isnan(b)) | (a == b), 0.0, diff)
    return float(diff.max()) if diff.numel() else 0.0


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
    _check_model(model)
    atol = check_number("atol", atol, low=0.0)
    rtol = check_number("rtol", rtol, low=0.0)
    source = _check_path(path, must_exist=True)
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
    frozen = _eval_copy(model)
    inputs = _check_inputs(example_inputs, frozen)
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
        difference = _difference(value, reference)
        if not _difference(value, reference, rtol) <= atol:
            raise ValueError(
                f"task {task!r}: onnxruntime and PyTorch differ by {difference:.3g}, beyond "
                f"atol + rtol * |value| (atol={atol:g}, rtol={rtol:g}); raise atol or rtol if "
                "the export is right"
            )
        worst = max(worst, difference)
    return worst
