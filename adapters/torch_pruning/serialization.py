"""Portable save/load of compact models: pruning history + state dict, ``weights_only=True``.

Re-exported by :mod:`adapters.torch_pruning`; import from there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from cut_plugin import select_tasks
from cut_plugin.record import PruningRecord, history_of, read_record, write_record
from cut_plugin.vocabulary import Inputs, as_example_inputs

__all__ = ["load_pruned", "pruning_history", "save_pruned"]

FORMAT = "cut-pam/pruned-v2"
FORMATS = ("cut-pam/pruned-v1", FORMAT)


def pruning_history(model: nn.Module) -> list[tuple[str, bool, list[int]]]:
    """The Torch-Pruning history a compact model of this package carries (empty if none)."""
    return history_of(model)


def save_pruned(
    model: nn.Module, path: str | os.PathLike[str], *, history: Sequence[Any] | None = None
) -> None:
    """Save a compact model portably: its :class:`cut_plugin.PruningRecord` and state dict.

    The record holds the task selection, the Torch-Pruning history, unstructured
    masks, the CUT config and the model's train/eval mode. Reload with
    :func:`load_pruned` (``torch.load(weights_only=True)``, no pickled code).
    ``history`` defaults to what ``cut_prune``/``CUTPruner``/``prune_by_masks``/
    ``baseline_prune`` recorded on the model; pass ``pruner.pruning_history()`` for
    models pruned by other Torch-Pruning pruners.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    record = read_record(model)
    if history is None and record is None:
        raise ValueError(
            "the model carries no pruning record (it was not made by cut_prune, CUTPruner, "
            "prune_by_masks or baseline_prune); pass history=pruner.pruning_history() — and prune "
            "the model itself, not a copy from select_tasks, so the history replays on the "
            "original architecture"
        )
    record = (record or PruningRecord()).replace(training=model.training)
    if history is not None:
        record = record.replace(history=[(str(n), bool(o), list(i)) for n, o, i in history])
    state = {"format": FORMAT, "record": record.to_state(), "state_dict": model.state_dict()}
    torch.save(state, path)


def _read(path: str | os.PathLike[str]) -> tuple[PruningRecord, dict[str, Any]]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") not in FORMATS:
        raise ValueError(
            f"{os.fspath(path)!r} is not a file written by save_pruned (format {FORMAT!r})"
        )
    if state["format"] == FORMAT:
        return PruningRecord.from_state(state["record"]), state["state_dict"]
    # v1: history, tasks and task names at the top level; no mode, masks or config.
    record = PruningRecord(
        tasks=state["tasks"], task_names=state.get("task_names"), history=state["history"]
    )
    return PruningRecord.from_state(record.to_state()), state["state_dict"]


def load_pruned(
    path: str | os.PathLike[str], model_factory: Callable[[], nn.Module], example_inputs: Inputs
) -> nn.Module:
    """Rebuild a compact model saved by :func:`save_pruned`, in the mode it was saved in.

    ``model_factory()`` must build the original (unpruned, all tasks) architecture;
    the saved pruning history is replayed on it, then the saved task selection,
    then the state dict is loaded and the record attached. Loads with
    ``weights_only=True``.
    """
    if not callable(model_factory):
        raise TypeError(
            "model_factory must be a callable that builds the original model, e.g. lambda: Net()"
        )
    record, state_dict = _read(path)
    model = model_factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_factory() must return an nn.Module, got {type(model).__name__}")
    was_training = model.training
    # Replay on the full model first (earlier prunings may have touched heads a
    # later task selection dropped), then select the tasks.
    graph = tp.DependencyGraph().build_dependency(
        model, as_example_inputs(example_inputs, model), verbose=False
    )
    try:
        graph.load_pruning_history([tuple(h) for h in record.history])
    except AttributeError as error:
        raise ValueError(
            f"the saved pruning history does not fit the model model_factory() builds ({error}); "
            "pass the factory of the original architecture"
        ) from None
    if record.tasks is not None:
        model = select_tasks(model, record.tasks, task_names=record.task_names)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise ValueError(
            f"the saved weights do not fit the rebuilt model ({str(error).splitlines()[0]}); "
            "pass the factory of the original architecture (all tasks, unpruned)"
        ) from None
    model.train(was_training if record.training is None else record.training)
    return write_record(model, record)
