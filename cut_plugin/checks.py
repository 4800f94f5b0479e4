"""Every transform checks itself: run the result on the example inputs against its promise.

``select_tasks``, ``cut_prune``, ``CUTPruner.step``, ``prune_by_masks`` and
``load_pruned`` return a new model; each runs it once on the example inputs and
compares with what it promises (the original's outputs, the masked model's, the
output shapes), raising :class:`TransformCheckError` (or ``ValueError`` for a bad
file or factory), naming the operation and the fix, rather than return a broken
model. :func:`unwrap_model` is the entry points' one treatment of wrapped models
(``torch.compile``, ``DataParallel``, ``DistributedDataParallel``).
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from cut_plugin.vocabulary import Inputs, as_example_inputs, run_model

__all__ = [
    "FROZEN_ATTRIBUTE_FIX",
    "TransformCheckError",
    "check_outputs",
    "check_shapes",
    "describe_failure",
    "evaluating",
    "outputs_of",
    "unwrap_model",
]

FROZEN_ATTRIBUTE_FIX = (
    "likely cause: the model is a traced torch.fx GraphModule, which freezes values the forward "
    "reads from layer attributes (e.g. self.fc.out_features in a view, or "
    "torch.split(x, [self.a.out_channels, ...])) as constants; pruning changes the layer, "
    "not the constant. Fix: return {task: head(h) for task, head in self.heads.items()} "
    "over an nn.ModuleDict self.heads (then the compact model stays your class and its "
    "forward re-reads the attributes), or size views/splits from the tensors (h.shape[1])"
)


class TransformCheckError(RuntimeError):
    """A transform's result failed its own check (crash or mismatch on the example inputs)."""


def unwrap_model(model: Any, *, operation: str) -> Any:
    """The plain module inside ``torch.compile`` / ``DataParallel`` / ``DistributedDataParallel``.

    Warns, naming the attribute used (``_orig_mod`` or ``.module``): the result of
    ``operation`` is the unwrapped module; compile or wrap it again if needed.
    Anything else is returned as it is.
    """
    while True:
        inner = getattr(model, "_orig_mod", None)
        if type(model).__name__ == "OptimizedModule" and isinstance(inner, nn.Module):
            warnings.warn(
                f"{operation}: the model is a torch.compile'd module (OptimizedModule); working "
                "on its original module model._orig_mod — the returned model is not compiled: "
                "call torch.compile on it again",
                UserWarning,
                stacklevel=3,
            )
            model = inner
        elif isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            warnings.warn(
                f"{operation}: the model is wrapped in {type(model).__name__}; working on "
                "model.module — the returned model is not wrapped: wrap it again if needed "
                "(or pass model.module yourself)",
                UserWarning,
                stacklevel=3,
            )
            model = model.module
        else:
            return model


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block: eval mode, no autograd; afterwards every module's mode as it was."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            yield model
    finally:
        for m, mode in modes:
            m.training = mode


def outputs_of(
    model: nn.Module, example_inputs: Inputs, task_names: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """``{task: output}`` of ``model`` in eval mode on clones of the inputs (in-place ops on the
    input must not change the caller's tensors, nor the next run)."""
    inputs = tuple(
        x.clone() if isinstance(x, Tensor) else x for x in as_example_inputs(example_inputs)
    )
    with evaluating(model):
        return run_model(model, inputs, task_names)


def describe_failure(model: nn.Module, example_inputs: Inputs, error: BaseException) -> str:
    """Where ``model`` failed: the fx node for a GraphModule, else the innermost user frame."""
    if isinstance(model, torch.fx.GraphModule):
        inputs = tuple(
            x.clone() if isinstance(x, Tensor) else x
            for x in as_example_inputs(example_inputs, model)
        )
        current: list[torch.fx.Node] = []

        class _Tracker(torch.fx.Interpreter):
            def run_node(self, n: torch.fx.Node) -> Any:
                current[:] = [n]
                return super().run_node(n)

        try:
            with evaluating(model):
                _Tracker(model).run(*inputs)
        except Exception:  # the same failure, now with the node that raised it
            if current:
                node = current[0]
                return f"at op {node.name!r} ({node.op} {node.target}{_args(node)})"
        return ""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "/torch/" not in f.filename]
    if frames:
        frame = frames[-1]
        return f"at {frame.filename}:{frame.lineno} `{(frame.line or '').strip()}`"
    return ""


def _args(node: torch.fx.Node) -> str:
    text = ", ".join(str(a) for a in node.args)
    return f" with args ({text})" if len(text) < 200 else ""


def _run(
    operation: str,
    model: nn.Module,
    example_inputs: Inputs,
    fix: str,
    error_type: type[Exception],
    task_names: Sequence[str] | None,
) -> dict[str, Tensor]:
    try:
        return outputs_of(model, example_inputs, task_names)
    except Exception as error:  # any failure of the result is the transform's failure
        where = describe_failure(model, example_inputs, error)
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise error_type(
            f"{operation}: the resulting model crashes on the example inputs "
            f"({type(error).__name__}: {first}) {where}; {fix}"
        ) from error


def check_shapes(
    operation: str,
    model: nn.Module,
    example_inputs: Inputs,
    expected: Mapping[str, torch.Size],
    *,
    fix: str,
    error_type: type[Exception] = TransformCheckError,
    task_names: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """Run ``model``: it must return exactly the tasks of ``expected`` with those shapes."""
    outputs = _run(operation, model, example_inputs, fix, error_type, task_names)
    if set(outputs) != set(expected):
        raise error_type(
            f"{operation}: the resulting model returns tasks {sorted(outputs)}, "
            f"expected {sorted(expected)}; {fix}"
        )
    for task, shape in expected.items():
        if tuple(outputs[task].shape) != tuple(shape):
            raise error_type(
                f"{operation}: the resulting model's output {task!r} has shape "
                f"{tuple(outputs[task].shape)}, expected {tuple(shape)}; {fix}"
            )
    return outputs


def check_outputs(
    operation: str,
    model: nn.Module,
    example_inputs: Inputs,
    expected: Mapping[str, Tensor],
    *,
    fix: str,
    promise: str,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    error_type: type[Exception] = TransformCheckError,
    task_names: Sequence[str] | None = None,
) -> None:
    """Run ``model``: it must return ``expected`` (same tasks, shapes, values within tolerance;
    ``atol`` is relative to the largest reference magnitude, at least 1)."""
    shapes = {task: value.shape for task, value in expected.items()}
    outputs = check_shapes(
        operation,
        model,
        example_inputs,
        shapes,
        fix=fix,
        error_type=error_type,
        task_names=task_names,
    )
    for task, reference in expected.items():
        value = outputs[task].to(reference.dtype)
        scale = max(1.0, float(reference.abs().max())) if reference.numel() else 1.0
        if not torch.allclose(value, reference, rtol=rtol, atol=atol * scale, equal_nan=True):
            difference = float((value - reference).abs().max())
            raise error_type(
                f"{operation}: the resulting model differs from {promise} on task {task!r} by "
                f"{difference:.3g} (tolerance {atol * scale:.1g} + {rtol:g}·|x|); {fix}"
            )
