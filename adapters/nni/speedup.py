"""NNI (or CUT) masks → a physically smaller model through Torch-Pruning (needs NNI installed).

NNI's own ``ModelSpeedup`` fails on torch >= 2.2 (NNI issue #5768). Re-exported by
:mod:`adapters.nni`; import from there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from nni.compression.base.compressor import Compressor
from torch import Tensor, nn

from adapters.nni.masks import param_masks, plain_copy
from adapters.torch_pruning import prune_by_masks
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

    Raises:
        RuntimeError: Torch-Pruning could not compact the model consistently (the
            compact model's outputs are checked on ``example_inputs``).
    """
    plain = plain_copy(model)
    expected = _output_shapes(plain, example_inputs)
    if isinstance(expected, torch.Size) and task_names is None:
        task_names = ["output"]  # a single-task model: its one output layer keeps its width
    try:
        compact = prune_by_masks(plain, param_masks(masks), example_inputs, task_names=task_names)
    except IndexError as error:
        raise RuntimeError(f"{LIMIT} ({type(error).__name__}: {error})") from error
    try:
        got = _output_shapes(compact, example_inputs)
    except RuntimeError as error:
        raise RuntimeError(f"{LIMIT}; the compact model fails: {error}") from error
    if got != expected:
        raise RuntimeError(f"{LIMIT}; its outputs are shaped {got} instead of {expected}")
    return compact


LIMIT = (
    "Torch-Pruning could not compact this model consistently (a known case: Torch-Pruning 1.6.1 "
    "mis-maps a torch.cat of flattened conv outputs feeding a Linear, as in a merged network whose "
    "first linear layer reads several groups of a flattened conv layer)"
)


def _shapes(output: Any) -> Any:
    if isinstance(output, Tensor):
        return output.shape
    if isinstance(output, Mapping):
        return {key: _shapes(value) for key, value in output.items()}
    if isinstance(output, tuple | list):
        return [_shapes(value) for value in output]
    return None


def _output_shapes(model: nn.Module, example_inputs: Inputs) -> Any:
    """The shapes of ``model``'s outputs on ``example_inputs`` (eval mode, modes restored)."""
    inputs = as_example_inputs(example_inputs, model)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            return _shapes(model(*inputs))
    finally:
        for module, mode in modes:
            module.training = mode
