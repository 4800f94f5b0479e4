"""The PAM table: N single-task networks merged (or not), pruned until accuracy would drop.

Protocol (PAM, He et al. 2021): on MNIST-5k, tasks are disjoint digit groups
(``class_split``: 0–4 / 5–9, the paper's Fashion-MNIST protocol;
``class_split5``: five pairs), one LeNet-5 per task; on ``scene_attributes``
(the paper's CelebA/LFW shape: five correlated groups of binary attributes of
the same scene images, :mod:`benchmarks.attribute_data`), one VGG-style
4-conv network per group, trained on every image (``PAM_MODELS``; cached).
Each task's loss is its data's (cross-entropy, or BCE-with-logits for a
multi-label group), its accuracy that of ``benchmarks.training.evaluate``
(top-1, or per label over the group's labels). Per pruner
(Torch-Pruning's Taylor or magnitude importance, or ``gates``: the released
PAM pruner, ``prune_merged_gates``), the columns are
``no-merge`` (each network pruned alone; a combination costs the sum of its
networks), ``mtz`` (``MTZMerger``, then pruned) and ``pam-<grouping>``
(``PAMMerger``, then pruned). Each gets the same joint retraining
(``retrain_steps``), then the same loop: prune ``step_ratio`` of the remaining
channels of every prunable layer (``prune_merged``, local ranking), fine-tune
``finetune_steps`` (``pam_plugin.retrain``, summed task losses); the kept
model is the last one whose validation accuracy is, for **every** task, at
most ``accuracy_tolerance`` points below its single-task network's; pruning
stops after ``patience`` such misses in a row (1: at the first) or once a step
removes less than ``min_step_reduction`` of the MACs (Torch-Pruning keeps one
channel per layer of every group); ``schedule="fixed"`` runs every one of
``max_pruning_steps`` as the released code does and keeps the cheapest step
within the tolerance (``benchmarks.pam_pruning``). With ``gates`` a step
trains ``gate_batches`` SGD-Nesterov batches at ``gate_lr`` while reading the
Taylor gates, then removes ``step_ratio`` of the pruned groups' neurons by one
threshold across layers (``pruned_groups="shared"``: the shared groups only,
as released; a single network's every neuron). Rows: every task combination
(``combination_costs``), test accuracy of its tasks, MACs.

Implementation notes (choices the paper leaves open):
- The constraint is per task, on a validation split carved from the training
  images (never seen by the single-task networks); the table shows test
  accuracy. ``patience=3``: one validation image is 0.25 point (2 tasks) or
  0.6 point (5 tasks) here, so a single miss is often noise.
- A single network is wrapped as a one-task ``MergedNetwork`` (exact), so
  no-merge runs the same pruner, importance and fine-tuning code. Budgets are
  the same steps and batch size per network (a merged network's batch holds
  every task's images, a single network's only its own).
- Merging knobs are relaxed until the retrained, unpruned network meets the
  constraint: PAM's α (the paper's 0.2 / 0.15) times each of ``alpha_scales``,
  MTZ's share each of ``mtz_shares``. A PAM merge leaving a task no neuron
  (with the paper's wiring, a layer without shared neurons cuts the shared
  path) counts as a miss. If none qualifies, the last one built is reported
  unpruned (marked in the table).
- PAM's labels: an image of another task keeps the target -100, one more
  label value ("none of mine") for the MI.
- ``pruned_groups="all"`` also prunes exclusive groups (no-merge prunes every
  layer); the paper's LeNet code prunes only the shared group (``"shared"``).
- Two tasks: ``subsets`` grouping equals ``paper`` (subsets {A}, {B}, {A, B}).
- Seeds: the table is measured once per entry of ``seeds`` (data split,
  single networks, merge batch, fine-tuning order); the report gives mean ±
  sd over seeds, per combination and for the totals, and ``headline``
  entries (``pam.best_combination.*``, ``pam.total.*``) with the worst task's
  accuracy gap and, for totals, the cap (``benchmarks.pam_stats``).
- ``delete_groups``: Torch-Pruning keeps one channel per layer and group, so
  once the loop stops the kept model's whole groups (exclusive chains first,
  by MACs saved) are deleted while every task stays within the tolerance on
  validation (``pam_plugin.delete_groups``, no fine-tuning after).
- ``threads`` torch threads (1: LeNet-sized ops gain nothing from more and
  slow down badly on a shared machine); the setting is restored after.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from functools import partial
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from adapters.registry import build
from benchmarks.cells import Cell, Cells, cell_settings, partial_count, run_cells
from benchmarks.needs import data_needs
from benchmarks.pam_config import PAM_MODELS, PAM_PRUNERS, PAM_SPLITS, PAMSuiteConfig
from benchmarks.pam_context import PAMContext, own_rows, prepare_context
from benchmarks.pam_pruning import prune_until
from benchmarks.pam_render import pam_summaries, plot_pam, render_pam
from benchmarks.pam_stats import pam_headline, summarize_table, total_cap
from benchmarks.part import Part
from pam_plugin import (
    Cost,
    MergedNetwork,
    build_merged,
    combination_costs,
    network_cost,
)

__all__ = [
    "AXES",
    "PAM_PRUNERS",
    "PAM_SPLITS",
    "PART",
    "PAMSuiteConfig",
    "pam_cell",
    "run_pam_suite",
    "total_cap",
]


Attempt = tuple[dict[str, Any], Callable[[], MergedNetwork]]


def _relaxed(ctx: PAMContext, attempts: list[Attempt]) -> tuple[MergedNetwork | None, dict]:
    """Build and retrain each setting in turn until one meets the tolerance unpruned.

    Returns the network (the last one built when none qualifies, ``None`` when
    none could be built) and ``{"setting", "tried"}``.
    """
    chosen: tuple[MergedNetwork, dict[str, Any]] | None = None
    tried: list[dict[str, Any]] = []
    for setting, make in attempts:
        try:
            merged = make()
        except ValueError as error:  # PAM: a task kept no neuron
            tried.append({**setting, "error": str(error)})
            continue
        ctx.retrain(merged, ctx.config.retrain_steps, seed=ctx.seed * 31 + 1)
        accuracy = ctx.accuracy(merged, ctx.validation)
        tried.append({**setting, "validation_accuracy": accuracy, "meets": ctx.meets(accuracy)})
        chosen = (merged, setting)
        if ctx.meets(accuracy):
            break
    if chosen is None:
        return None, {"setting": None, "tried": tried}
    return chosen[0], {"setting": chosen[1], "tried": tried}


def _candidates(ctx: PAMContext) -> tuple[dict[str, dict[str, MergedNetwork]], dict[str, dict]]:
    """``{method: {network: retrained network}}`` before pruning, and how each merge was chosen."""
    config, example, networks = ctx.config, ctx.merge_inputs, ctx.networks
    built: dict[str, dict[str, MergedNetwork]] = {
        "no-merge": {
            t: ctx.retrain(build_merged({t: n}, example), config.retrain_steps, ctx.seed * 31 + 1)
            for t, n in networks.items()
        }
    }
    plans: dict[str, list[Attempt]] = {
        "mtz": [
            ({"share": s}, partial(build(config.mtz_config(s)).merge, networks, example))
            for s in config.mtz_shares
        ]
    }
    for method, attempts in config.pam_attempts().items():
        plans[method] = [
            (setting, partial(build(merger).merge, networks, example, ctx.merge_labels))
            for setting, merger in attempts
        ]
    merges: dict[str, dict] = {}
    for method, attempts in plans.items():
        merged, merges[method] = _relaxed(ctx, attempts)
        if merged is not None:
            built[method] = {"merged": merged}
    return built, merges


def _costs(models: Mapping[str, MergedNetwork], example: Tensor) -> dict[frozenset[str], Cost]:
    """Every combination's cost: of the merged network, or summed over independent networks."""
    if list(models) == ["merged"]:
        return combination_costs(models["merged"], example)
    return combination_costs(dict(models), example)


_SPLIT: dict[tuple, tuple[PAMContext, dict, dict, dict]] = {}
"""One split and seed's context, single-network accuracies and merges, kept between its cells."""


def _split_context(
    key: str, config: PAMSuiteConfig, seed: int, progress: bool, device: str
) -> tuple[PAMContext, dict, dict, dict]:
    """References, merges and the retrained candidates of one split and seed (one held per process)."""
    held = (cell_settings(config, AXES), key, seed, device)
    if held not in _SPLIT:
        _SPLIT.clear()
        ctx = prepare_context(key, config, seed, progress, device)
        single = {
            "validation": ctx.reference,
            "test": {
                t: ctx.accuracy(n, own_rows(ctx.data.test, t))[t] for t, n in ctx.networks.items()
            },
        }
        candidates, merges = _candidates(ctx)
        _SPLIT[held] = (ctx, single, candidates, merges)
    return _SPLIT[held]


def _run_pruner(
    key: str, config: PAMSuiteConfig, seed: int, pruner: str, progress: bool, device: str
) -> dict[str, Any]:
    """One split, seed and pruner: references, merges, runs, rows and the summary."""
    ctx, single, candidates, merges = _split_context(key, config, seed, progress, device)
    tasks = ctx.data.task_names
    methods = [m for m in config.methods() if m in candidates]
    example = ctx.merge_inputs[:1]
    unpruned = {m: sum(c.macs for c in _costs(candidates[m], example).values()) for m in methods}
    jobs = [(m, n) for m in methods for n in candidates[m]]
    pruned: dict[str, dict[str, MergedNetwork]] = {}
    runs: list[dict[str, Any]] = []
    for method, name in tqdm(jobs, desc=f"PAM {key} {pruner}", disable=not progress):
        torch.manual_seed(seed)
        model, record = prune_until(ctx, candidates[method][name], pruner)
        pruned.setdefault(method, {})[name] = model
        unpruned_macs = network_cost(candidates[method][name], example).macs
        runs.append({"split": key, "seed": seed, "pruner": pruner, "method": method, "network": name,
                     "unpruned_macs": unpruned_macs, **record})  # fmt: skip
    table: list[dict[str, Any]] = []
    for method in methods:
        accuracy = {t: a for r in runs if r["method"] == method
                    for t, a in r["test_accuracy"].items()}  # fmt: skip
        for combination, cost in _costs(pruned[method], example).items():
            chosen = [t for t in tasks if t in combination]
            table.append({
                "split": key, "seed": seed, "pruner": pruner, "method": method,
                "grouping": method[4:] if method.startswith("pam-") else None,
                "tasks": chosen, "accuracy": {t: accuracy[t] for t in chosen},
                "macs": cost.macs, "params": cost.params,
            })  # fmt: skip
    entry = summarize_table(table, runs, unpruned, methods, tasks)
    summary = [{"split": key, "seed": seed, "pruner": pruner, **entry}]
    return {"single": single, "merges": merges, "runs": runs, "rows": table, "summary": summary}


AXES = ("splits", "seeds", "pruners")
"""The settings the PAM part's cells iterate over: one cell per split, seed and pruner (the
merges of a split and seed are made once per process and shared by its pruners' cells)."""


def pam_cell(
    key: str, config: PAMSuiteConfig, seed: int, pruner: str, progress: bool, device: str
) -> dict[str, Any]:
    """One split, seed and pruner of the PAM tables, at ``config.threads`` torch threads (when set)."""
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _run_pruner(key, config, seed, pruner, progress, device)
    finally:
        torch.set_num_threads(threads)


def run_pam_suite(
    config: PAMSuiteConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    device: str = "cpu",
    cells: Cells | None = None,
) -> dict[str, Any]:
    """Run every split × pruner × method; a JSON-serialisable dict of measured results.

    Keys: ``config``; ``seeds`` (each of ``config.seeds`` plus ``seed``);
    ``single_task_accuracy`` ``{split: {seed: {"validation"|"test": {task:
    accuracy}}}}``; ``merges`` ``{split: {seed: {method: {"setting",
    "tried"}}}}`` (the merging knob chosen); ``rows``, one per split × seed ×
    pruner × method × task combination (``tasks``, test ``accuracy`` per task,
    ``macs``, ``params`` per sample); ``runs``, one per pruned network (steps
    kept, accuracies, group sizes, deleted groups, per-step history);
    ``summary``, one per split × seed × pruner (total MACs over all
    combinations, before and after pruning, their ratios and caps, the best
    combination's ratio); ``models`` ``{split: {"name", "options"}}``, the
    single-task networks. Seeds are JSON keys, so strings. ``device``: where the
    networks train, merge and prune (the data stays on the host). ``cells``: where
    each finished split × seed × pruner is stored and how many worker processes
    compute them (:mod:`benchmarks.cells`; default: in-process, not stored).
    """
    if not isinstance(config, PAMSuiteConfig):
        raise TypeError(f"config must be a PAMSuiteConfig, got {type(config).__name__}")
    cells = cells or Cells()
    seeds = [seed + s for s in config.seeds]
    settings = cell_settings(config, AXES)
    cases = [(key, s, p) for s in seeds for key in config.splits for p in config.pruners]
    work = [
        Cell({"part": "pam", "settings": settings, "split": key, "seed": s, "pruner": p}, pam_cell,
             (key, config, s, p, progress and cells.jobs == 1, device))
        for key, s, p in cases
    ]  # fmt: skip
    try:
        values = run_cells(cells, work, desc="PAM splits x seeds x pruners", progress=progress)
    finally:
        _SPLIT.clear()
    parts: dict[tuple[str, int], dict[str, Any]] = {}
    for (key, s, _), value in zip(cases, values, strict=True):
        if value is None:
            continue
        if (key, s) not in parts:
            parts[key, s] = {"single": value["single"], "merges": value["merges"],
                             "runs": [], "rows": [], "summary": []}  # fmt: skip
        for name in ("runs", "rows", "summary"):
            parts[key, s][name] += value[name]
    return {
        "config": asdict(config),
        "seeds": seeds,
        "single_task_accuracy": {
            k: {str(s): parts[(k, s)]["single"] for s in seeds if (k, s) in parts}
            for k in config.splits
        },
        "merges": {
            k: {str(s): parts[(k, s)]["merges"] for s in seeds if (k, s) in parts}
            for k in config.splits
        },
        "rows": [r for p in parts.values() for r in p["rows"]],
        "runs": [r for p in parts.values() for r in p["runs"]],
        "summary": [s for p in parts.values() for s in p["summary"]],
        "models": {
            k: {"name": PAM_MODELS[k][0], "options": PAM_MODELS[k][1]} for k in config.splits
        },
        **partial_count(cells, values),
    }


PART = Part(
    name="pam",
    title="PAM: merge single-task networks, then prune (every task combination)",
    config=PAMSuiteConfig,
    run=run_pam_suite,
    render=render_pam,
    summary=pam_summaries,
    plots=lambda metrics, out, plt: plot_pam({"metrics": {"pam": metrics}}, out, plt),
    needs=lambda config: [need for key in config.splits for need in data_needs(key)],
    headline=pam_headline,
    devices=("cpu", "cuda"),
    cells=True,
)
