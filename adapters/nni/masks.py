"""NNI's mask format and wrapped models, translated to this project's (needs NNI installed).

Re-exported by :mod:`adapters.nni`; import from there.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from nni.compression.base.compressor import Compressor
from nni.compression.base.wrapper import ModuleWrapper
from torch import Tensor, nn

__all__ = ["param_masks", "plain_copy", "unwrapped"]

WRAPPER = "_nni_wrapper"


def _wrappers(model: nn.Module) -> list[ModuleWrapper]:
    """The NNI wrappers currently wrapping modules of ``model``."""
    return [
        module._nni_wrapper  # type: ignore[union-attr]
        for module in model.modules()
        if isinstance(getattr(module, WRAPPER, None), ModuleWrapper)
    ]


@contextmanager
def unwrapped(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block ``model`` holds plain modules; afterwards its NNI wrappers are back.

    The wrappers' parameters (what an optimizer or a pruner holds) are the same
    objects afterwards; only the modules' shadow buffers are fresh copies, which
    the wrappers overwrite at every forward anyway.
    """
    wrappers = _wrappers(model)
    for wrapper in wrappers:
        wrapper.unwrap()
    try:
        yield model
    finally:
        for wrapper in wrappers:
            wrapper.wrap()


def plain_copy(model: nn.Module | Compressor) -> nn.Module:
    """A deep copy of ``model`` without NNI wrappers (weights as trained, masks not applied).

    Accepts a plain model, an NNI-wrapped one (``pruner.bound_model``) or an NNI
    pruner; none of them is changed. A wrapped model cannot be deep-copied directly
    after a forward (its modules then hold non-leaf tensors), hence the round trip.
    """
    if isinstance(model, Compressor):
        model = model.bound_model
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module or an NNI pruner, got {type(model).__name__}"
        )
    with unwrapped(model):
        return copy.deepcopy(model)


def param_masks(masks: Mapping[str, Any]) -> dict[str, Tensor]:
    """``{param_name: bool Tensor}`` from NNI's ``{module_name: {target_name: Tensor | None}}``.

    Masks already keyed by parameter name pass through (as bool); ``None`` masks
    (targets NNI did not mask) are left out; a name NNI gives inside a wrapped
    model (``layer._nni_wrapper.weight``) maps to the plain one (``layer.weight``).
    """
    if not isinstance(masks, Mapping):
        raise TypeError(
            "masks must be NNI's {module_name: {'weight': Tensor, 'bias': Tensor}} or "
            f"{{param_name: bool Tensor}}, got {type(masks).__name__}"
        )
    nested = [isinstance(value, Mapping) for value in masks.values()]
    if any(nested) and not all(nested):
        raise ValueError(
            "masks mixes NNI's {module_name: {target_name: Tensor}} entries with {param_name: Tensor} "
            "entries; give one format"
        )
    flat: dict[str, Any] = {}
    if all(nested):
        for module_name, targets in masks.items():
            for target_name, mask in targets.items():
                flat[f"{module_name}.{target_name}" if module_name else str(target_name)] = mask
    else:
        flat = dict(masks)
    result: dict[str, Tensor] = {}
    for name, mask in flat.items():
        if mask is None:
            continue
        if not isinstance(mask, Tensor):
            raise TypeError(f"masks[{name!r}] must be a Tensor or None, got {type(mask).__name__}")
        result[str(name).replace(f".{WRAPPER}.", ".")] = (
            mask.detach() != 0 if mask.dtype != torch.bool else mask
        )
    return result
