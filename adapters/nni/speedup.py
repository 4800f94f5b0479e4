"""NNI (or CUT) masks → a physically smaller model through Torch-Pruning (needs NNI installed).

NNI's own ``ModelSpeedup`` fails on torch >= 2.2 (NNI issue #5768). Re-exported by
:mod:`adapters.nni`; import from there.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from nni.compression.base.compressor import Compressor
from torch import Tensor, nn

from adapters.nni.masks import param_masks, plain_copy
from adapters.torch_pruning import prune_by_masks
from cut_plugin import apply_masks
from cut_plugin.vocabulary import Inputs, as_example_inputs

__all__ = ["speedup"]


def speedup(
    model: nn.Module | Compressor,
    masks: Mapping[str, Any],
    example_inputs: Inputs,
    *,
    task_names: Sequence[str] | None = None,
) -> nn.Module:
    """A physically smaller copy of ``model`` from NNI (or CUT) masks, through Torch-Pruning.

    Args:
        model: the model the masks were made for — plain, NNI-wrapped
            (``pruner.bound_model``) or the pruner itself; never changed.
        masks: NNI's ``{module_name: {"weight": Tensor, "bias": Tensor}}`` (from any
            NNI pruner's ``compress()``/``get_masks()``) or ``{param_name: bool Tensor}``.
        example_inputs: a Tensor or tuple for tracing.
        task_names: names of a tuple output's tasks (a model returning one Tensor is
            single-task: no names needed).

    Channels masked in every coupled layer (residual adds and concats included) are
    removed, with their biases, BatchNorm entries and consumers' input columns; kept
    weights stay masked, and every task's output layer keeps its width. The result
    computes what ``apply_masks(model, align_masks(model, param_masks(masks), x))``
    computes (BatchNorm of removed channels masked too: NNI leaves it unmasked, so
    NNI's masked model adds a constant where the compact one has nothing).

    NNI's own pruners leave BatchNorm unmasked: their masked model then differs from
    the compact one; ``speedup`` measures it and warns with the largest difference.

    Raises:
        RuntimeError: Torch-Pruning could not compact the model consistently (the
            compact model's outputs are checked on ``example_inputs``).
    """
    plain = plain_copy(model)
    expected = _outputs(plain, example_inputs)
    if isinstance(expected, Tensor) and task_names is None:
        task_names = ["output"]  # a single-task model: its one output layer keeps its width
    flat = param_masks(masks)
    try:
        compact = prune_by_masks(plain, flat, example_inputs, task_names=task_names)
    except (IndexError, RuntimeError) as error:
        raise RuntimeError(
            f"{LIMIT}: removing the masked channels with Torch-Pruning's dependency graph raised "
            f"{type(error).__name__}: {error}"
        ) from error
    try:
        got = _outputs(compact, example_inputs)
    except RuntimeError as error:
        raise RuntimeError(
            f"{LIMIT}: the compact model's forward on example_inputs fails: {error}"
        ) from error
    if _shapes(got) != _shapes(expected):
        raise RuntimeError(
            f"{LIMIT}: the compact model's outputs are shaped {_shapes(got)} instead of "
            f"{_shapes(expected)}"
        )
    difference = _max_difference(_outputs(apply_masks(plain, flat), example_inputs), got)
    if difference > 1e-4:
        warnings.warn(
            f"the compact model differs from the masked model by up to {difference:.3g}: the masks "
            "leave the BatchNorm (and biases) of removed channels unmasked, as NNI's pruners do, so "
            "the masked model adds a constant where the compact model has nothing. The compact model "
            "computes apply_masks(model, align_masks(model, masks, example_inputs)); "
            "adapters.nni.CUTPruner's masks cover BatchNorm.",
            stacklevel=2,
        )
    return compact


LIMIT = "speedup: Torch-Pruning could not compact this model consistently"


def _flatten(output: Any) -> list[Tensor]:
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, Mapping):
        return [t for key in sorted(output, key=str) for t in _flatten(output[key])]
    if isinstance(output, tuple | list):
        return [t for value in output for t in _flatten(value)]
    return []


def _max_difference(a: Any, b: Any) -> float:
    pairs = zip(_flatten(a), _flatten(b), strict=True)
    return max((float((x - y).abs().max()) for x, y in pairs if x.numel()), default=0.0)


def _shapes(output: Any) -> Any:
    if isinstance(output, Tensor):
        return output.shape
    if isinstance(output, Mapping):
        return {key: _shapes(value) for key, value in output.items()}
    if isinstance(output, tuple | list):
        return [_shapes(value) for value in output]
    return None


def _outputs(model: nn.Module, example_inputs: Inputs) -> Any:
    """``model``'s outputs on ``example_inputs`` (eval mode, no grad, modes restored)."""
    inputs = as_example_inputs(example_inputs, model)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            return model(*inputs)
    finally:
        for module, mode in modes:
            module.training = mode
