"""``CUTConfig``: every option of CUT's scoring and fusion in one validated, frozen object.

Every CUT entry point (``cut_masks``, ``adapters.torch_pruning.CUTImportance`` /
``CUTPruner`` / ``cut_prune``, ``adapters.nni.CUTPruner``, the registry) takes
``config=CUTConfig(...)`` or the same options as keywords, which
:func:`resolve_config` turns into one config. A compact model carries its config in
its :class:`cut_plugin.record.PruningRecord`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cut_plugin.fusion import Rule, check_rule
from cut_plugin.scoring import Criterion, check_criterion

__all__ = ["CUT_OPTIONS", "CUTConfig", "resolve_config", "split_options"]


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class CUTConfig:
    """How CUT scores parameters per task and fuses the tasks' verdicts on shared ones."""

    criterion: Criterion = field(
        default="taylor",
        metadata=_help(
            "per-task importance: 'taylor' (Σ|w·∂L_t/∂w|, the paper), 'magnitude' (|w|), "
            "'fisher' (½w²Σ_b(∂L_t/∂w)²), or 'activation' (channels, not elements: "
            "Σ_b|Σ a·∂L_t/∂a| per conv/linear output channel from activation gradients, no "
            "weight gradient; an approximate, faster option for channel pruning only)"
        ),
    )
    rule: Rule = field(
        default="vote",
        metadata=_help(
            "fusion on shared parameters: 'vote' (CUT: kept when >= votes tasks keep it), 'any' "
            "(DiSparse), 'all', or the score rules 'mean', 'max', 'weighted'"
        ),
    )
    votes: int = field(
        default=2,
        metadata=_help(
            "for 'vote': how many of the tasks using a parameter must keep it (clipped)"
        ),
    )
    weights: Mapping[str, float] | None = field(
        default=None, metadata=_help("for 'weighted': {task: weight >= 0}")
    )
    calibrate: bool = field(
        default=True,
        metadata=_help(
            "verdict rules: search each task's keep fraction so that the fused verdict keeps "
            "exactly 1 - pruning_ratio (False: the paper's literal rule, which misses the ratio)"
        ),
    )

    def __post_init__(self) -> None:
        check_criterion(self.criterion)
        check_rule(self.rule, self.votes)
        if not isinstance(self.calibrate, bool):
            raise TypeError(f"calibrate must be True or False, got {self.calibrate!r}")
        if self.weights is not None:
            if not isinstance(self.weights, Mapping) or not self.weights:
                raise TypeError(
                    "weights must be a non-empty dict {task: weight} (a list is accepted by the "
                    f"entry points that know the tasks), got {self.weights!r}"
                )
            checked: dict[str, float] = {}
            for task, value in self.weights.items():
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or not math.isfinite(value)
                    or value < 0
                ):
                    raise ValueError(
                        f"weights[{task!r}] must be a finite number >= 0, got {value!r}"
                    )
                checked[str(task)] = float(value)
            object.__setattr__(self, "weights", checked)
        if self.rule == "weighted" and self.weights is None:
            raise ValueError("rule 'weighted' needs weights={task: weight}")

    def task_weights(self, tasks: Sequence[str]) -> list[float] | None:
        """The weights of ``tasks`` in order (None unless ``rule='weighted'``), or a clear error."""
        if self.rule != "weighted" or self.weights is None:
            return None
        missing = [t for t in tasks if t not in self.weights]
        if missing:
            raise ValueError(
                f"weights has no entry for task(s) {missing}; give one weight per task of {list(tasks)}"
            )
        return [self.weights[t] for t in tasks]

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (what ``torch.load(weights_only=True)`` reads back)."""
        result = dataclasses.asdict(self)
        result["weights"] = dict(self.weights) if self.weights is not None else None
        return result

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> CUTConfig:
        """The inverse of :meth:`to_dict` (unknown keys are an error)."""
        return resolve_config(None, dict(state))


CUT_OPTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(CUTConfig))


def split_options(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``kwargs`` split into (CUT options, the rest), e.g. for Torch-Pruning."""
    cut = {k: v for k, v in kwargs.items() if k in CUT_OPTIONS}
    return cut, {k: v for k, v in kwargs.items() if k not in CUT_OPTIONS}


def resolve_config(
    config: CUTConfig | Mapping[str, Any] | None,
    options: Mapping[str, Any],
    *,
    tasks: Sequence[str] | None = None,
) -> CUTConfig:
    """One :class:`CUTConfig` from ``config=`` or keyword ``options`` (not both).

    ``config`` may be a dict of the same fields. ``weights`` may be a list, one per
    task of ``tasks`` in order.
    """
    unknown = sorted(set(options) - set(CUT_OPTIONS))
    if unknown:
        raise TypeError(f"unknown CUT option(s) {unknown}; the options are {list(CUT_OPTIONS)}")
    if config is not None and options:
        raise TypeError(
            f"pass either config=CUTConfig(...) or the options {sorted(options)} as keywords, not both"
        )
    if isinstance(config, CUTConfig):
        values = config.to_dict()
    elif isinstance(config, Mapping):
        values = dict(config)
        unknown = sorted(set(values) - set(CUT_OPTIONS))
        if unknown:
            raise TypeError(
                f"config has unknown key(s) {unknown}; the options are {list(CUT_OPTIONS)}"
            )
    elif config is None:
        values = dict(options)
    else:
        raise TypeError(f"config must be a CUTConfig or a dict, got {type(config).__name__}")
    weights = values.get("weights")
    if weights is not None and not isinstance(weights, Mapping):
        if isinstance(weights, str) or not isinstance(weights, Sequence):
            raise TypeError(f"weights must be a dict {{task: weight}} or a list, got {weights!r}")
        if tasks is None:
            raise TypeError(
                "weights as a list needs the tasks it belongs to; give weights={task: weight}"
            )
        if len(weights) != len(tasks):
            raise ValueError(
                f"weights has {len(weights)} entries for the {len(tasks)} tasks {list(tasks)}; "
                "give one per task, or weights={task: weight}"
            )
        values["weights"] = dict(zip(tasks, weights, strict=True))
    return CUTConfig(**values)
