"""Configuration of the PAM benchmark table: a frozen dataclass validated on construction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from adapters.torch_pruning import PRUNED_GROUPS
from cut_plugin.vocabulary import check_choice, check_int, check_number

__all__ = [
    "PAM_GROUPINGS",
    "PAM_MODELS",
    "PAM_MTZ_VARIANTS",
    "PAM_PRUNERS",
    "PAM_SCHEDULES",
    "PAM_SPLITS",
    "PAMSuiteConfig",
]

PAM_SPLITS: tuple[str, ...] = ("class_split", "class_split5", "scene_attributes")
PAM_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "class_split": ("lenet5", {}),
    "class_split5": ("lenet5", {}),
    "scene_attributes": ("vgg", {"width": 8, "depth": 2, "stages": 2}),
}
"""Split → the single-task networks' zoo model and options (``benchmarks.models.build_model``).

``scene_attributes``: four 3×3 conv-BN-ReLU (8, 8, max-pool, 16, 16 channels),
global average pooling and a linear head: 1.7M MACs per 32×32 image.
"""
PAM_PRUNERS: tuple[str, ...] = ("taylor", "magnitude", "gates")
"""Torch-Pruning's Taylor and magnitude importances (local, ``step_ratio`` of every pruned
layer), or ``gates``: the released PAM pruner (``prune_merged_gates``: Taylor gates scored
while training ``gate_batches`` SGD-Nesterov steps at ``gate_lr``, one global threshold)."""
PAM_SCHEDULES: tuple[str, ...] = ("tolerance", "fixed")
PAM_GROUPINGS: tuple[str, ...] = ("paper", "subsets")
PAM_SUMMARIES: tuple[str, ...] = ("max", "map")
PAM_MTZ_VARIANTS: tuple[str, ...] = ("pam", "released")
MTZ_VARIANT_OPTIONS: dict[str, dict[str, str]] = {
    "pam": {},
    "released": {"wiring": "released", "fc_cost": "euclidean"},
}
"""``MTZMerger`` options of each MTZ variant (``mtz_variant``)."""


def _check_tuple(name: str, values: Any, check: Callable[[str, Any], object]) -> None:
    if not isinstance(values, tuple) or not values:
        raise TypeError(f"{name} must be a non-empty tuple, got {values!r}")
    for value in values:
        check(f"{name} entry", value)
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must not repeat a value, got {values!r}")


@dataclass(frozen=True)
class PAMSuiteConfig:
    """One PAM table per split × pruner: merging knobs, pruning and fine-tuning budgets.

    ``accuracy_tolerance`` is in points, per task; ``step_ratio`` the fraction
    of the remaining channels removed per pruning step; ``finetune_steps`` the
    joint retraining steps after each; ``retrain_steps`` those after merging.
    ``seeds``: the whole table is measured once per seed (the run's ``--seed``
    is added to each) and reported as mean ± sd. ``conv_summary``: PAM's conv
    neuron, ``"max"`` or ``"map"`` (the official code's full map; α scale
    differs, ``PAMMerger``). ``delete_groups``: after pruning, delete whole
    groups (exclusive chains) while every task stays within the tolerance.
    ``mtz_variant``: ``"pam"`` (MTZ with PAM's wiring, the default) or
    ``"released"`` (the authors' ``W_inter`` wiring and fully-connected rule;
    ``MTZMerger``); :meth:`mtz_config` builds the merger's registry config.
    ``attribute_images``: ``(train, test)`` images of the ``scene_attributes``
    split (validation is carved from train); :meth:`data_options` gives a
    split's ``load_data`` options, :data:`PAM_MODELS` its networks.
    ``relative_thresholds``: when given, one more PAM column per grouping,
    ``pam-<grouping>-relative`` (``PAMMerger(relevance="relative")``, relaxed
    over these thresholds in turn, as α is over ``alpha_scales``).
    ``schedule``: ``"tolerance"`` (stop after ``patience`` misses) or ``"fixed"``
    (every one of ``max_pruning_steps``, the cheapest step within tolerance kept).
    ``gate_batches`` / ``gate_lr``: the ``gates`` pruner's training batches per
    step (10 released) and SGD-Nesterov learning rate (0.01 released); with it
    ``step_ratio`` is the fraction of the pruned groups' neurons removed per step
    by one threshold across layers (0.09 released for merged networks, 0.10 for
    single ones).
    """

    splits: tuple[str, ...] = ("class_split",)
    pruners: tuple[str, ...] = ("taylor",)
    groupings: tuple[str, ...] = ("paper",)
    alpha_conv: float = 0.2
    alpha_fc: float = 0.15
    alpha_scales: tuple[float, ...] = (1.0, 0.5, 0.25)
    mtz_shares: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
    pruned_groups: str = "all"
    pretrain_epochs: int = 20
    validation_fraction: float = 0.2
    merge_samples: int = 128
    retrain_steps: int = 500
    step_ratio: float = 0.1
    finetune_steps: int = 150
    max_pruning_steps: int = 25
    patience: int = 3
    min_step_reduction: float = 0.01
    accuracy_tolerance: float = 1.0
    importance_batches: int = 4
    batch_size: int = 64
    eval_batch_size: int = 500
    lr: float = 1e-3
    threads: int | None = 1
    cache_dir: str = ".cache/cut-pam"
    seeds: tuple[int, ...] = (0,)
    conv_summary: str = "max"
    delete_groups: bool = True
    mtz_variant: str = "pam"
    attribute_images: tuple[int, int] = (6000, 2000)
    relative_thresholds: tuple[float, ...] = ()
    schedule: str = "tolerance"
    gate_batches: int = 10
    gate_lr: float = 0.01

    def __post_init__(self) -> None:
        options = {"splits": PAM_SPLITS, "pruners": PAM_PRUNERS, "groupings": PAM_GROUPINGS}
        for name, choices in options.items():
            _check_tuple(name, getattr(self, name), partial(check_choice, choices=choices))
        fraction = partial(check_number, low=0.0, high=1.0, low_open=True)
        _check_tuple("alpha_scales", self.alpha_scales, fraction)
        _check_tuple("mtz_shares", self.mtz_shares, fraction)
        for name in ("alpha_conv", "alpha_fc", "lr"):
            check_number(name, getattr(self, name), low=0.0, low_open=True)
        check_choice("pruned_groups", self.pruned_groups, PRUNED_GROUPS)
        fraction("validation_fraction", self.validation_fraction, high=0.5)
        fraction("step_ratio", self.step_ratio, high=0.9)
        check_number("min_step_reduction", self.min_step_reduction, low=0.0, high=0.5)
        check_number("accuracy_tolerance", self.accuracy_tolerance, low=0.0, high=100.0)
        check_int("merge_samples", self.merge_samples, low=2)
        for name in ("pretrain_epochs", "importance_batches", "batch_size", "eval_batch_size"):
            check_int(name, getattr(self, name))
        check_int("patience", self.patience)
        for name in ("retrain_steps", "finetune_steps", "max_pruning_steps"):
            check_int(name, getattr(self, name), low=0)
        if self.threads is not None:
            check_int("threads", self.threads)
        _check_tuple("seeds", self.seeds, partial(check_int, low=0))
        check_choice("conv_summary", self.conv_summary, PAM_SUMMARIES)
        check_choice("mtz_variant", self.mtz_variant, PAM_MTZ_VARIANTS)
        check_choice("schedule", self.schedule, PAM_SCHEDULES)
        check_int("gate_batches", self.gate_batches)
        check_number("gate_lr", self.gate_lr, low=0.0, low_open=True)
        if not isinstance(self.attribute_images, tuple) or len(self.attribute_images) != 2:
            raise TypeError(
                f"attribute_images must be (train, test) image counts, got {self.attribute_images!r}"
            )
        for count in self.attribute_images:
            check_int("attribute_images entry", count, low=2)
        if self.relative_thresholds != ():
            _check_tuple("relative_thresholds", self.relative_thresholds,
                         partial(check_number, low=0.0))  # fmt: skip
        if not isinstance(self.delete_groups, bool):
            raise TypeError(f"delete_groups must be a bool, got {self.delete_groups!r}")
        if not isinstance(self.cache_dir, str) or not self.cache_dir:
            raise TypeError(f"cache_dir must be a non-empty path string, got {self.cache_dir!r}")

    def mtz_config(self, share: float) -> dict[str, Any]:
        """The registry config of the MTZ merger at ``share``: ``{"merger": "mtz", "share": share, ...}``."""
        return {"merger": "mtz", "share": share, **MTZ_VARIANT_OPTIONS[self.mtz_variant]}

    def data_options(self, split: str) -> dict[str, Any]:
        """``load_data`` options of ``split`` beyond the seed (image counts, the scenes' cache)."""
        if split != "scene_attributes":
            return {}
        train, test = self.attribute_images
        return {"train": train, "test": test, "cache_dir": f"{self.cache_dir}/scenes"}

    def pam_attempts(self) -> dict[str, list[tuple[dict[str, float], dict[str, Any]]]]:
        """Per PAM column, its ``(setting, merger registry config)`` in the order they are tried."""
        plans: dict[str, list[tuple[dict[str, float], dict[str, Any]]]] = {}
        for grouping in self.groupings:
            base = {"merger": "pam", "grouping": grouping, "summary": self.conv_summary}
            alphas = [{"alpha_conv": self.alpha_conv * scale, "alpha_fc": self.alpha_fc * scale}
                      for scale in self.alpha_scales]  # fmt: skip
            plans[f"pam-{grouping}"] = [(a, {**base, **a}) for a in alphas]
            if self.relative_thresholds:
                plans[f"pam-{grouping}-relative"] = [
                    ({"relative_threshold": t}, {**base, "relevance": "relative",
                                                  "relative_threshold": t})
                    for t in self.relative_thresholds
                ]  # fmt: skip
        return plans

    def methods(self) -> list[str]:
        """The table's columns for this config."""
        return ["no-merge", "mtz", *self.pam_attempts()]
