"""What CUT's NNI pruner protects and completes: task output layers, data, BatchNorm masks.

Used by :class:`adapters.nni.CUTPruner`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from adapters.nni.masks import param_masks

__all__ = ["NORM_TYPES", "add_norm_masks", "first_inputs", "materialise", "protect_configs"]


def materialise(data: Iterable[Any] | None, max_batches: int | None) -> Iterable[Any] | None:
    """A re-iterable ``data`` (a one-shot iterator is read once, up to ``max_batches``)."""
    if isinstance(data, Iterator):
        if max_batches is None:
            # list(data) of an endless iterator grows until memory runs out.
            raise ValueError(
                f"data is a one-shot iterator ({type(data).__name__}) and max_batches is None: "
                "CUTPruner keeps the batches to score them again at every mask generation, so it "
                "would read an endless iterator forever; pass max_batches=N, or a list or a DataLoader"
            )
        return list(itertools.islice(data, max_batches))
    return data


def first_inputs(data: Iterable[Any] | None) -> Any:
    """The inputs of ``data``'s first batch (None without data or batches)."""
    if data is None:
        return None
    for batch in data:
        return batch[0] if isinstance(batch, tuple | list) and batch else None
    return None


NORM_TYPES = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


def protect_configs(
    bound: nn.Module,
    configs: list[dict[str, Any]],
    example_inputs: Any,
    task_names: Sequence[str] | None,
    protect_outputs: bool,
) -> tuple[list[dict[str, Any]], list[str], set[str]]:
    """``(configs, output layer names, BatchNorm names)``: configs without the task output
    layers (unless ``protect_outputs`` is False), plus every BatchNorm at ratio 0 (wrapped
    so that it can be masked with its conv, never scored)."""
    from adapters.torch_pruning import output_layers

    names = {id(m): n for n, m in bound.named_modules()}
    outputs = output_layers(bound, example_inputs, task_names=task_names)
    protected = sorted(names[id(m)] for m in outputs.values())
    if protect_outputs:
        configs = [
            {**c, "exclude_op_names": [*(c.get("exclude_op_names") or []), *protected]}
            for c in configs
        ]
    norms = {n for n, m in bound.named_modules() if type(m).__name__ in NORM_TYPES}
    if norms:
        configs = [*configs, {"op_names": sorted(norms), "sparse_ratio": 0.0}]
    return configs, protected, norms


def add_norm_masks(
    model: nn.Module,
    masks: dict[str, dict[str, Tensor]],
    spaces: Mapping[str, Mapping[str, Any]],
    norms: set[str],
    example_inputs: Any,
    task_names: Sequence[str] | None,
) -> None:
    """Add to NNI ``masks`` the BatchNorm scale/shift of every channel ``speedup`` removes.

    Found through Torch-Pruning's graph (``adapters.torch_pruning.align_masks``) on the
    unwrapped ``model``; BatchNorm of kept channels gets all-ones masks.
    """
    from adapters.torch_pruning import align_masks

    aligned = align_masks(model, param_masks(masks), example_inputs, task_names=task_names)
    for name in norms:
        for target_name, space in spaces[name].items():
            target = space.target
            if target is None:
                continue
            keep = aligned.get(f"{name}.{target_name}")
            mask = torch.ones_like(target) if keep is None else keep.to(target.dtype)
            masks.setdefault(name, {})[target_name] = mask.to(target.device)
