"""Portable save/load of compact models: pruning history + state dict, ``weights_only=True``.

Re-exported by :mod:`adapters.torch_pruning`; import from there.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import fx, nn

from adapters.torch_pruning.attention import sync_heads
from cut_plugin import select_tasks
from cut_plugin.checks import check_shapes, outputs_of
from cut_plugin.record import PruningRecord, history_of, read_record, write_record
from cut_plugin.state import scoring_state
from cut_plugin.vocabulary import Inputs, as_example_inputs

__all__ = ["load_pruned", "pruning_history", "save_pruned"]

FORMAT = "cut-pam/pruned-v2"
FORMATS = ("cut-pam/pruned-v1", FORMAT)


def pruning_history(model: nn.Module) -> list[tuple[str, bool, list[int]]]:
    """The Torch-Pruning history a compact model of this package carries (empty if none)."""
    return history_of(model)


def save_pruned(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    history: Sequence[Any] | None = None,
    example_inputs: Inputs | None = None,
) -> None:
    """Save a compact model portably: its :class:`cut_plugin.PruningRecord` and state dict.

    The record holds the task selection, the Torch-Pruning history, unstructured
    masks, the CUT config and the model's train/eval mode. Reload with
    :func:`load_pruned` (``torch.load(weights_only=True)``, no pickled code).
    ``history`` defaults to what ``cut_prune``/``CUTPruner``/``prune_by_masks``/
    ``baseline_prune`` recorded on the model; pass ``pruner.pruning_history()`` for
    models pruned by other Torch-Pruning pruners.

    With ``example_inputs`` the file also holds the shapes of those inputs and of the
    model's outputs on them (``input_shapes``, ``output_shapes``: one forward in eval
    mode); :func:`load_pruned` then checks the rebuilt model against them. Files
    without them (older ones too) load as before.
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
    state = {
        "format": FORMAT,
        "record": record.to_state(),
        "state_dict": model.state_dict(),
        # load_pruned rebuilds the same kind: the user's class, or a traced graph.
        "traced": isinstance(model, fx.GraphModule),
    }
    if example_inputs is not None:
        example = as_example_inputs(example_inputs, model)
        outputs = outputs_of(model, example, record.task_names)
        state["input_shapes"] = [_shape(x) for x in example]
        state["output_shapes"] = {task: list(value.shape) for task, value in outputs.items()}
    torch.save(state, path)


def _shape(value: Any) -> list[int] | None:
    return list(value.shape) if isinstance(value, torch.Tensor) else None


def _load(path: str | os.PathLike[str]) -> Any:
    """``torch.load(weights_only=True)``, with a ValueError saying what the file is not."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"{name!r}: no such file (save one with save_pruned(model, path))")
    if os.path.getsize(name) == 0:
        raise ValueError(f"{name!r} is empty (0 bytes), not a file written by save_pruned")
    if zipfile.is_zipfile(name):
        with zipfile.ZipFile(name) as archive:
            entries = archive.namelist()
        if any(e.endswith("/constants.pkl") or "/code/" in e for e in entries):
            raise ValueError(
                f"{name!r} is a TorchScript archive (export_torchscript), not a save_pruned "
                "file; load it with torch.jit.load"
            )
    try:
        return torch.load(name, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises OSError, EOFError, KeyError, RuntimeError...
        with open(name, "rb") as file:
            head = file.read(512)
        if head.startswith(b"PK"):
            what = "a truncated or corrupt zip archive"
        elif all(32 <= b < 127 or b in b"\t\r\n" for b in head):
            what = "a text file, not a torch.save archive"
        elif "weights_only" in str(error) or "Unpickl" in type(error).__name__:
            what = "a torch.save file with pickled objects that weights_only=True refuses"
        else:
            what = "not a readable torch.save archive (truncated or another format)"
        raise ValueError(
            f"{name!r} is {what} ({type(error).__name__}); it is not a file written by "
            "save_pruned: save the compact model with save_pruned(model, path)"
        ) from None


Shapes = tuple[list[list[int] | None], dict[str, list[int]]] | None


def _saved_shapes(state: dict[str, Any]) -> Shapes:
    """``(input shapes, {task: output shape})`` written by ``save_pruned(example_inputs=...)``."""
    if "output_shapes" not in state:
        return None
    inputs, outputs = state.get("input_shapes"), state["output_shapes"]
    if not isinstance(inputs, list) or not isinstance(outputs, dict):
        raise TypeError("input_shapes/output_shapes")
    return (
        [None if s is None else [int(d) for d in s] for s in inputs],
        {str(t): [int(d) for d in s] for t, s in outputs.items()},
    )


def _read(
    path: str | os.PathLike[str],
) -> tuple[PruningRecord, dict[str, Any], bool | None, Shapes]:
    state = _load(path)
    if not isinstance(state, dict) or state.get("format") not in FORMATS:
        raise ValueError(
            f"{os.fspath(path)!r} is not a file written by save_pruned (format {FORMAT!r})"
        )
    try:
        if state["format"] == FORMAT:
            record = PruningRecord.from_state(state["record"])
            return record, state["state_dict"], state.get("traced"), _saved_shapes(state)
        # v1: history, tasks and task names at the top level; no mode, masks or config.
        old = PruningRecord(
            tasks=state["tasks"], task_names=state.get("task_names"), history=state["history"]
        )
        return PruningRecord.from_state(old.to_state()), state["state_dict"], True, None
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{os.fspath(path)!r} is an incomplete save_pruned file (missing or bad "
            f"{error}); save it again with save_pruned(model, path)"
        ) from None


def load_pruned(
    path: str | os.PathLike[str],
    model_factory: Callable[[], nn.Module],
    example_inputs: Inputs,
    *,
    check: bool = True,
) -> nn.Module:
    """Rebuild a compact model saved by :func:`save_pruned`, in the mode it was saved in.

    ``model_factory()`` must build the original (unpruned, all tasks) architecture;
    the saved pruning history is replayed on it, then the saved task selection,
    then the state dict is loaded and the record attached. Loads with
    ``weights_only=True``. Checked (``check=True``, one forward of the original and
    one of the result on ``example_inputs``): the result runs and returns the saved
    tasks with the original's output shapes (the pruners here never change a task's
    output width; ``check=False`` for a model whose output layers were pruned). A
    file saved with ``example_inputs`` also holds the saved model's output shapes:
    the result must return exactly those (on inputs of the saved shapes, or of those
    shapes with another batch size; other inputs skip this part).

    Raises:
        ValueError: the file is empty, truncated, text, a TorchScript archive or not
            written by ``save_pruned``; or the factory does not build its architecture.
    """
    if not callable(model_factory):
        raise TypeError(
            "model_factory must be a callable that builds the original model, e.g. lambda: Net()"
        )
    record, state_dict, traced, saved = _read(path)
    model = model_factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_factory() must return an nn.Module, got {type(model).__name__}")
    was_training = model.training
    example = as_example_inputs(example_inputs, model)
    reference = outputs_of(model, example, record.task_names) if check else {}
    # Replay on the full model first (earlier prunings may have touched heads a
    # later task selection dropped), then select the tasks.
    with scoring_state(model):  # Torch-Pruning traces through autograd: no frozen layer hidden
        graph = tp.DependencyGraph().build_dependency(model, example, verbose=False)
    try:
        graph.load_pruning_history([tuple(h) for h in record.history])
    except AttributeError as error:
        raise ValueError(
            f"the saved pruning history does not fit the model model_factory() builds ({error}); "
            "pass the factory of the original architecture"
        ) from None
    sync_heads(model)  # replayed head pruning: head counts follow the widths, as after a step
    if record.tasks is not None:
        # The kind that was saved: a traced graph (older files too), or the user's class.
        try:
            model = select_tasks(
                model,
                record.tasks,
                task_names=record.task_names,
                example_inputs=None if traced is not False else example,
            )
        except Exception as error:  # the rebuilt model itself fails: the wrong factory
            first = (str(error).splitlines() or [""])[0]
            raise ValueError(
                f"load_pruned: the model model_factory() builds, with the saved pruning of "
                f"{os.fspath(path)!r} replayed, fails on the example inputs "
                f"({type(error).__name__}: {first}); pass the factory of the original "
                "architecture (all tasks, unpruned)"
            ) from error
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise ValueError(
            f"the saved weights do not fit the rebuilt model ({str(error).splitlines()[0]}); "
            "pass the factory of the original architecture (all tasks, unpruned)"
        ) from None
    model.train(was_training if record.training is None else record.training)
    if check:
        tasks = record.tasks if record.tasks is not None else list(reference)
        check_shapes(
            "load_pruned",
            model,
            example,
            {task: reference[task].shape for task in tasks if task in reference},
            fix=f"model_factory() must build the architecture {os.fspath(path)!r} was pruned "
            "from (all tasks, unpruned); load_pruned(..., check=False) skips this check",
            error_type=ValueError,
        )
        expected = _expected_shapes(saved, example)
        if expected is not None:
            check_shapes(
                "load_pruned",
                model,
                example,
                expected,
                fix=f"the rebuilt model does not compute what {os.fspath(path)!r} was saved "
                "computing (save_pruned(..., example_inputs=...) stored its output shapes): "
                "pass the factory of the original architecture and the file's own model; "
                "load_pruned(..., check=False) skips this check",
                error_type=ValueError,
                task_names=record.task_names,
            )
    return write_record(model, record)


def _expected_shapes(saved: Shapes, example: tuple[Any, ...]) -> dict[str, torch.Size] | None:
    """The saved output shapes for these inputs: as saved for the same input shapes; with
    the batch size replaced when only the batch differs; ``None`` (nothing to check) else."""
    if saved is None:
        return None
    inputs, outputs = saved
    now = [_shape(x) for x in example]
    if len(now) != len(inputs):
        return None
    if now == inputs:
        return {task: torch.Size(shape) for task, shape in outputs.items()}
    tensors = [(a, b) for a, b in zip(now, inputs, strict=True) if a is not None and b is not None]
    if not tensors or any(a[1:] != b[1:] or len(a) != len(b) for a, b in tensors):
        return None
    before, after = {b[0] for _, b in tensors}, {a[0] for a, _ in tensors}
    if len(before) != 1 or len(after) != 1:
        return None
    old_batch, new_batch = before.pop(), after.pop()
    if any(not shape or shape[0] != old_batch for shape in outputs.values()):
        return None  # an output without the batch dimension first: no shape to predict
    return {task: torch.Size([new_batch, *shape[1:]]) for task, shape in outputs.items()}
