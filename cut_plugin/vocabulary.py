"""The project's vocabulary at the boundary: tasks, outputs, batches, losses, devices, options.

Every public function of ``cut_plugin``, ``pam_plugin`` and ``adapters``
validates its inputs through these helpers, so that a bad input gets the same
clear message everywhere. Option checks take ``(name, value)``; the vocabulary
checks (tasks, ratio, losses) take the value first and ``name=`` as a keyword.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

Inputs = Tensor | tuple[Tensor, ...]
Batch = tuple[Inputs, Mapping[str, Tensor]]
Loss = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "Batch",
    "Inputs",
    "Loss",
    "as_example_inputs",
    "as_task_outputs",
    "check_batch",
    "check_batches",
    "check_choice",
    "check_int",
    "check_losses",
    "check_number",
    "check_ratio",
    "check_targets",
    "check_task_mapping",
    "check_tasks",
    "iterate_batches",
    "model_device_dtype",
    "index_tensor",
    "move_to",
    "run_model",
    "scalar_loss",
]


def check_tasks(
    tasks: Any, available: Sequence[str] | None = None, *, name: str = "tasks"
) -> list[str]:
    """Return ``tasks`` as a list of unique strings, all in ``available`` when given."""
    if isinstance(tasks, str):
        raise TypeError(
            f"{name} must be a list of task names, got the string {tasks!r}; use [{tasks!r}]"
        )
    if not isinstance(tasks, Iterable):
        raise TypeError(f"{name} must be a list of task names, got {type(tasks).__name__}")
    result = list(tasks)
    if not result:
        choices = f"; choose from {list(available)}" if available is not None else ""
        raise ValueError(f"{name} is empty: select at least one task{choices}")
    for task in result:
        if not isinstance(task, str):
            raise TypeError(f"{name} must hold strings, got {task!r} ({type(task).__name__})")
    duplicates = sorted({t for t in result if result.count(t) > 1})
    if duplicates:
        raise ValueError(f"{name} lists {duplicates} more than once; give each task once")
    if available is not None:
        unknown = [t for t in result if t not in available]
        if unknown:
            raise ValueError(
                f"unknown task(s) {unknown} in {name}; the model's tasks are {list(available)}"
            )
    return result


def check_ratio(value: Any, *, name: str = "pruning_ratio") -> float:
    """Return a pruning ratio in [0, 1) as a float, or raise naming the value."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a float in [0, 1), got {value!r} ({type(value).__name__})")
    value = float(value)
    if math.isnan(value) or not 0.0 <= value < 1.0:
        raise ValueError(
            f"{name} must be in [0, 1) (the fraction removed), got {value}; "
            "1.0 would remove everything, use e.g. 0.5 to remove half"
        )
    return value


def check_number(
    name: str, value: Any, *, low: float = -math.inf, high: float = math.inf, low_open: bool = False
) -> float:
    """Return ``value`` as a float in ``[low, high]`` (``(low, high]`` when ``low_open``), or raise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a float, got {value!r} ({type(value).__name__})")
    bracket = "(" if low_open else "["
    below = value <= low if low_open else value < low
    if math.isnan(value) or below or value > high:
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value!r}")
    return float(value)


def check_int(name: str, value: Any, *, low: int = 1) -> int:
    """Return ``value`` as an int >= ``low``, or raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {low}, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` when it is one of ``choices``, or raise naming them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_task_mapping(
    name: str, mapping: Any, tasks: Sequence[str], *, owner: str = "network"
) -> dict[str, Any]:
    """Return ``mapping`` as a dict with exactly the keys ``tasks``, or raise naming the difference.

    ``owner`` names what the tasks belong to in the message (``"network"``: the
    networks' tasks).
    """
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{name} must be a mapping {{task: value}}, got {type(mapping).__name__}")
    missing = [t for t in tasks if t not in mapping]
    extra = [t for t in mapping if t not in tasks]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no entry for task(s) {missing}")
        if extra:
            parts.append(f"entries for task(s) {extra} that have no {owner}")
        raise ValueError(f"{name} has {' and '.join(parts)}; the {owner}s' tasks are {list(tasks)}")
    return {t: mapping[t] for t in tasks}


def check_losses(losses: Any, tasks: Sequence[str]) -> dict[str, Loss]:
    """Return ``{task: loss}`` for ``tasks``; raise if a task has no callable loss."""
    if not isinstance(losses, Mapping):
        raise TypeError(
            f"losses must be a mapping {{task: loss_fn}}, got {type(losses).__name__}; "
            "e.g. {'digit': torch.nn.functional.cross_entropy}"
        )
    missing = [t for t in tasks if t not in losses]
    if missing:
        raise ValueError(
            f"losses has no entry for task(s) {missing}; give one loss per selected task"
        )
    for task in tasks:
        if not callable(losses[task]):
            raise TypeError(f"losses[{task!r}] must be callable (output, target) -> scalar Tensor")
    return {t: losses[t] for t in tasks}


def as_task_outputs(output: Any, task_names: Sequence[str] | None = None) -> dict[str, Tensor]:
    """Return a model output as ``{task: Tensor}``.

    A mapping is returned as a dict; a tuple/list needs ``task_names`` of the same length.
    """
    if isinstance(output, Mapping):
        result = dict(output)
        for key, value in result.items():
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"the model's output {key!r} is a {type(value).__name__}, not a Tensor; a "
                    "multi-task model returns {task: Tensor} (move other values out of forward's "
                    "result)"
                )
        return result
    if isinstance(output, tuple | list):
        if task_names is None:
            raise TypeError(
                f"the model returned a {type(output).__name__} of {len(output)} outputs; "
                "pass task_names=[...] naming them in order, or return a dict {task: output}"
            )
        if len(task_names) != len(output):
            raise ValueError(
                f"task_names has {len(task_names)} names but the model returned {len(output)} outputs"
            )
        return dict(zip(task_names, output, strict=True))
    if isinstance(output, Tensor) and task_names is not None and len(task_names) == 1:
        return {task_names[0]: output}
    raise TypeError(
        f"a multi-task model must return a dict {{task: Tensor}}, got {type(output).__name__}; "
        "return a dict, or a tuple with task_names=[...]"
    )


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of the model's first parameter (CPU/float32 if none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def index_tensor(values: Sequence[int], like: Tensor) -> Tensor:
    """``values`` as an int64 index tensor on ``like``'s device (never torch's default device)."""
    return torch.tensor(list(values), dtype=torch.long, device=like.device)


def move_to(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """``value`` on ``device``: a floating Tensor also in ``dtype``, other Tensors keep theirs.

    Tuples and lists are moved element-wise; anything else is returned as is. No
    copy when a Tensor is already there (``Tensor.to``); the caller's tensors are
    never changed.
    """
    if isinstance(value, Tensor):
        if value.is_floating_point():
            return value.to(device=device, dtype=dtype)
        return value.to(device=device)
    if isinstance(value, tuple | list):
        return type(value)(move_to(x, device, dtype) for x in value)
    return value


def run_model(
    model: nn.Module, inputs: Inputs, task_names: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """Call ``model`` on ``inputs`` (a Tensor or a tuple passed positionally) → ``{task: Tensor}``.

    Floating inputs are moved to the model's device and dtype (new tensors; the
    caller's are not changed).
    """
    device, dtype = model_device_dtype(model)
    if isinstance(inputs, Tensor):
        output = model(move_to(inputs, device, dtype))
    elif isinstance(inputs, tuple | list):
        output = model(*move_to(tuple(inputs), device, dtype))
    else:
        raise TypeError(
            f"batch inputs must be a Tensor or a tuple of Tensors, got {type(inputs).__name__}"
        )
    return as_task_outputs(output, task_names)


def check_targets(targets: Any, tasks: Sequence[str], index: int) -> dict[str, Tensor]:
    """Return ``{task: target}`` for ``tasks`` from one batch's targets, or raise naming the batch."""
    if not isinstance(targets, Mapping):
        raise TypeError(
            f"batch {index}: targets must be a dict {{task: Tensor}}, got {type(targets).__name__}"
        )
    missing = [t for t in tasks if t not in targets]
    if missing:
        raise ValueError(
            f"batch {index} has no target for task(s) {missing}; its targets are {list(targets)}"
        )
    return {t: targets[t] for t in tasks}


def check_batch(batch: Any, index: int) -> tuple[Inputs, Mapping[str, Tensor]]:
    """Return one batch as ``(inputs, targets)``, or raise naming the batch ``index``."""
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        raise TypeError(
            f"batch {index} must be a pair (inputs, targets) with targets a dict {{task: Tensor}}; "
            f"got {type(batch).__name__}"
        )
    inputs, targets = batch
    if not isinstance(targets, Mapping):
        raise TypeError(
            f"batch {index}: targets must be a dict {{task: Tensor}}, got {type(targets).__name__}"
        )
    return inputs, targets


def check_batches(batches: Any) -> None:
    """Raise unless ``batches`` is an iterable of batches (a DataLoader, a list, a generator)."""
    if isinstance(batches, Tensor) or not isinstance(batches, Iterable):
        raise TypeError(
            "batches must be an iterable of (inputs, targets) pairs, e.g. a DataLoader or a list; "
            f"got {type(batches).__name__}"
        )


def iterate_batches(
    batches: Iterable[Any], *, max_batches: int | None = None
) -> Iterator[tuple[int, Inputs, Mapping[str, Tensor]]]:
    """Yield ``(index, inputs, targets)`` from ``(inputs, targets)`` batches.

    Raises if a batch is not a pair or its targets are not a mapping, and if
    ``batches`` yields nothing. Stops after ``max_batches`` when given.
    """
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
    ):
        raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
    check_batches(batches)
    count = 0
    # islice: never pull a batch past max_batches from the caller's iterator (it would be lost).
    for index, batch in enumerate(itertools.islice(batches, max_batches)):
        inputs, targets = check_batch(batch, index)
        count += 1
        yield index, inputs, targets
    if count == 0:
        if isinstance(batches, Iterator):
            raise ValueError(
                f"batches is a one-shot {type(batches).__name__} that yielded no batch: it is empty "
                "or already consumed; pass a list or a DataLoader (an earlier pass, e.g. a previous "
                "pruning step, may have read it)"
            )
        raise ValueError(
            "batches yielded no batch; pass a non-empty DataLoader or list of (inputs, targets)"
        )


def scalar_loss(loss_fn: Loss, output: Tensor, target: Tensor, *, task: str, index: int) -> Tensor:
    """Call a task's loss and check it is a finite scalar, naming task and batch otherwise."""
    loss = loss_fn(output, target)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(
            f"the loss of task {task!r} must return a scalar Tensor, got {shape} at batch {index}; "
            "reduce it (e.g. reduction='mean')"
        )
    if not torch.isfinite(loss).all():
        raise ValueError(
            f"the loss of task {task!r} is {loss.item()} at batch {index}; "
            "check that batch's inputs/targets and the model's outputs for NaN/inf"
        )
    return loss.reshape(())


def as_example_inputs(
    example_inputs: Any, model: nn.Module | None = None, *, tensors_only: bool = False
) -> tuple[Any, ...]:
    """Example inputs as the tuple a forward takes positionally (a bare Tensor is wrapped).

    With ``model``, Tensors move to the model's device (floating ones to its
    dtype too; new tensors, the caller's are unchanged), as ``run_model`` does for
    batches. ``tensors_only``: every entry must be a Tensor (exporters, MAC
    counters). An empty tuple is an error: a forward needs an input.
    """
    if isinstance(example_inputs, Tensor):
        example: tuple[Any, ...] = (example_inputs,)
    elif isinstance(example_inputs, tuple | list) and example_inputs:
        example = tuple(example_inputs)
    else:
        raise TypeError(
            "example_inputs must be a Tensor or a non-empty tuple of Tensors, "
            f"got {type(example_inputs).__name__}"
        )
    if tensors_only:
        for index, value in enumerate(example):
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"example_inputs[{index}] must be a Tensor, got {type(value).__name__}"
                )
    if model is None:
        return example
    device, dtype = model_device_dtype(model)
    return tuple(move_to(example, device, dtype))
