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
from cut_plugin.vocabulary import Inputs, as_example_inputs

__all__ = ["load_pruned", "pruning_history", "save_pruned"]

HISTORY = "_cut_pam_history"
TASKS = "_cut_pam_tasks"
TASK_NAMES = "_cut_pam_task_names"
FORMAT = "cut-pam/pruned-v1"


def pruning_history(model: nn.Module) -> list[tuple[str, bool, list[int]]]:
    """The Torch-Pruning history a compact model of this package carries (empty if none)."""
    return list(getattr(model, HISTORY, []))


def save_pruned(
    model: nn.Module, path: str | os.PathLike[str], *, history: Sequence[Any] | None = None
) -> None:
    """Save a compact model portably: its pruning history and state dict.

    Reload with :func:`load_pruned` (``torch.load(weights_only=True)``, no pickled
    code). ``history`` defaults to what ``cut_prune``/``CUTPruner``/
    ``prune_by_masks`` recorded on the model; pass ``pruner.pruning_history()``
    for models pruned by other Torch-Pruning pruners.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    entries = pruning_history(model) if history is None else list(history)
    if history is None and not hasattr(model, HISTORY):
        raise ValueError(
            "the model carries no pruning history (it was not made by cut_prune, CUTPruner or "
            "prune_by_masks); pass history=pruner.pruning_history()"
        )
    tasks = getattr(model, TASKS, None)
    state = {
        "format": FORMAT,
        "history": [[str(n), bool(out), [int(i) for i in idxs]] for n, out, idxs in entries],
        "tasks": list(tasks) if tasks is not None else None,
        "task_names": getattr(model, TASK_NAMES, None),
        "state_dict": model.state_dict(),
    }
    torch.save(state, path)


def load_pruned(
    path: str | os.PathLike[str], model_factory: Callable[[], nn.Module], example_inputs: Inputs
) -> nn.Module:
    """Rebuild a compact model saved by :func:`save_pruned`.

    ``model_factory()`` must build the original (unpruned, all tasks) architecture;
    the saved task selection and pruning history are replayed on it, then the
    state dict is loaded. Loads with ``weights_only=True``.
    """
    if not callable(model_factory):
        raise TypeError(
            "model_factory must be a callable that builds the original model, e.g. lambda: Net()"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"{os.fspath(path)!r} is not a file written by save_pruned (format {FORMAT!r})"
        )
    model = model_factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_factory() must return an nn.Module, got {type(model).__name__}")
    was_training = model.training
    history = [(n, out, idxs) for n, out, idxs in state["history"]]
    # Replay on the full model first (earlier prunings may have touched heads a
    # later task selection dropped), then select the tasks.
    graph = tp.DependencyGraph().build_dependency(
        model, as_example_inputs(example_inputs, model), verbose=False
    )
    try:
        graph.load_pruning_history(history)
    except AttributeError as error:
        raise ValueError(
            f"the saved pruning history does not fit the model model_factory() builds ({error}); "
            "pass the factory of the original architecture"
        ) from None
    if state["tasks"] is not None:
        model = select_tasks(model, state["tasks"], task_names=state.get("task_names"))
        setattr(model, TASKS, list(state["tasks"]))
        setattr(model, TASK_NAMES, state.get("task_names"))
    model.load_state_dict(state["state_dict"])
    model.train(was_training)
    setattr(model, HISTORY, history)
    return model
