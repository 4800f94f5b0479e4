"""``PruningRecord``: what a compact model of this project carries, written and read in one place.

A model returned by ``select_tasks``-based pruning (``cut_prune``, ``CUTPruner``,
``prune_by_masks``, ``baseline_prune``, ``load_pruned``, NNI's ``speedup``...) carries
the tasks it serves, the output names of a tuple-output model, the Torch-Pruning
history that rebuilds it from the original architecture, unstructured masks when it
has them, and the CUT configuration that made it. :func:`write_record` is the only
writer, :func:`read_record` the only reader.

Implementation notes:
- The record lives in the module's ``__dict__`` (so ``copy.deepcopy`` of a plain
  module keeps it) and, on a ``torch.fx.GraphModule``, also in
  ``meta["_user_preserved_attributes"]``, which ``GraphModule.__deepcopy__`` restores
  (it re-creates the module from its graph and drops other attributes).
- ``model.cut_pam_masks`` is kept as an alias of ``record.masks`` for code written
  against the first release.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from cut_plugin.config import CUTConfig

__all__ = ["RECORD_ATTRIBUTE", "HistoryEntry", "PruningRecord", "read_record", "write_record"]

RECORD_ATTRIBUTE = "cut_pam_record"
MASKS_ALIAS = "cut_pam_masks"
_PRESERVED = "_user_preserved_attributes"  # torch.fx.graph_module._USER_PRESERVED_ATTRIBUTES_KEY

HistoryEntry = tuple[str, bool, list[int]]


@dataclass(eq=False)
class PruningRecord:
    """The pruning state of a compact model (all fields optional)."""

    tasks: list[str] | None = None
    task_names: list[str] | None = None
    history: list[HistoryEntry] = field(default_factory=list)
    masks: dict[str, Tensor] | None = None
    training: bool | None = None
    config: CUTConfig | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PruningRecord):
            return NotImplemented
        plain = ("tasks", "task_names", "training", "config")
        if any(getattr(self, f) != getattr(other, f) for f in plain):
            return False
        if [tuple(h) for h in self.history] != [tuple(h) for h in other.history]:
            return False
        if self.masks is None or other.masks is None:
            return self.masks is other.masks
        return self.masks.keys() == other.masks.keys() and all(
            torch.equal(self.masks[k].cpu(), other.masks[k].cpu()) for k in self.masks
        )

    __hash__ = None  # type: ignore[assignment]

    def replace(self, **changes: Any) -> PruningRecord:
        """A new record with ``changes`` (the history list and masks dict are copied)."""
        record = dataclasses.replace(self, **changes)
        record.history = [tuple(h) for h in record.history]  # type: ignore[misc]
        if record.masks is not None:
            record.masks = dict(record.masks)
        return record

    def to_state(self) -> dict[str, Any]:
        """Plain containers and tensors only: what ``torch.load(weights_only=True)`` reads."""
        return {
            "tasks": list(self.tasks) if self.tasks is not None else None,
            "task_names": list(self.task_names) if self.task_names is not None else None,
            "history": [
                [str(n), bool(out), [int(i) for i in idxs]] for n, out, idxs in self.history
            ],
            "masks": {k: v.detach().cpu() for k, v in self.masks.items()}
            if self.masks is not None
            else None,
            "training": self.training,
            "config": self.config.to_dict() if self.config is not None else None,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> PruningRecord:
        """The inverse of :meth:`to_state`."""
        config = state.get("config")
        return cls(
            tasks=list(state["tasks"]) if state.get("tasks") is not None else None,
            task_names=list(state["task_names"]) if state.get("task_names") is not None else None,
            history=[(str(n), bool(out), list(idxs)) for n, out, idxs in state.get("history", [])],
            masks=dict(state["masks"]) if state.get("masks") is not None else None,
            training=state.get("training"),
            config=CUTConfig.from_dict(config) if config is not None else None,
        )


def read_record(model: nn.Module) -> PruningRecord | None:
    """The record ``model`` carries, or None for a model this project did not make."""
    record = model.__dict__.get(RECORD_ATTRIBUTE)
    if record is None and isinstance(model, fx.GraphModule):
        record = getattr(model, "meta", {}).get(_PRESERVED, {}).get(RECORD_ATTRIBUTE)
    return record if isinstance(record, PruningRecord) else None


def write_record(model: nn.Module, record: PruningRecord | None = None, **fields: Any) -> nn.Module:
    """Attach ``record`` (or the model's current one updated with ``fields``) to ``model``.

    ``write_record(model, tasks=[...])`` updates one field and keeps the others.
    Returns ``model``.
    """
    base = record if record is not None else (read_record(model) or PruningRecord())
    new = base.replace(**fields)
    if new.tasks is not None:
        new.tasks = list(new.tasks)
    if new.task_names is not None:
        new.task_names = list(new.task_names)
    model.__dict__[RECORD_ATTRIBUTE] = new
    if new.masks is not None:
        model.__dict__[MASKS_ALIAS] = new.masks
    else:
        model.__dict__.pop(MASKS_ALIAS, None)
    if isinstance(model, fx.GraphModule):
        preserved = model.meta.setdefault(_PRESERVED, {})
        preserved[RECORD_ATTRIBUTE] = new
        if new.masks is not None:
            preserved[MASKS_ALIAS] = new.masks
        else:
            preserved.pop(MASKS_ALIAS, None)
    return model


def copy_record(source: nn.Module, target: nn.Module, **fields: Any) -> nn.Module:
    """Give ``target`` the record of ``source`` (updated with ``fields``); returns ``target``."""
    return write_record(target, read_record(source) or PruningRecord(), **fields)


def history_of(model: nn.Module) -> list[HistoryEntry]:
    """The Torch-Pruning history ``model`` carries (empty if none)."""
    record = read_record(model)
    return [tuple(h) for h in record.history] if record is not None else []  # type: ignore[misc]
