"""CUT in the papers' setting: a DeepLab-style multi-task model on dense scenes, every baseline.

The setting of CUT and DiSparse (NYUv2, Cityscapes) made offline: procedural
scenes (:mod:`benchmarks.scenes`) with segmentation, depth and surface normals,
or the real preprocessed folders when a user has them (``data="nyuv2"``). A
DeepLab-style model is pre-trained on all tasks once per seed; every method
then gets that model, the same task subset, scoring batches and fine-tuning.

Fine-tuning is a curve over budgets (BENCHMARKS.md): one Adam run per method,
evaluated on the **validation** split every ``eval_every`` steps; for each
budget the checkpoint with the best validation Δm so far is the one whose
**test** metrics are reported. ``paper_budget`` adds the released recipe (Adam
lr 1e-5, 1000 steps) as its own run. Over seeds: mean ± sd, and for CUT the
paired difference to the best other method with a 95 % t-interval — the
``headline`` entries ``cut.structured.vs_best_baseline`` and
``cut.unstructured.vs_best_baseline``.
"""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from adapters.torch_pruning import count_macs
from benchmarks.cells import Cell, Cells, cell_settings, partial_count, run_cells
from benchmarks.cut_methods import CUT_METHODS, Context, check_table
from benchmarks.data import TaskData, batches, load_data
from benchmarks.dense import dense_scores, task_delta_m
from benchmarks.dense_models import PAPER_DEEPLAB
from benchmarks.dense_render import (
    PAPER_BUDGET,
    dense_headline,
    dense_summaries,
    dense_tables,
    plot_dense,
)
from benchmarks.measure import latency_ms, timed
from benchmarks.needs import data_needs, module_need
from benchmarks.part import Part
from benchmarks.training import pretrained
from cut_plugin import mask_sparsity, select_tasks, train_tasks

__all__ = [
    "AXES",
    "DENSE_DATA",
    "PART",
    "DenseSuiteConfig",
    "data_settings",
    "dense_cell",
    "run_dense_suite",
]

DENSE_DATA = ("scenes", "nyuv2", "cityscapes")
"""The dense part's data: procedural scenes, or the real preprocessed folders."""

TINY_DEEPLAB = {"width": 8, "head_width": 16, "strides": [1, 2, 2, 1], "dilations": [1, 1, 1, 2]}
"""The CPU suites' DeepLab: output stride 8, 8–64 backbone channels, 16-wide ASPP branches."""


@dataclass(frozen=True)
class DenseSuiteConfig:
    """The dense CUT tables: data, model, subsets, ratios, methods, seeds and budgets."""

    data: str = "scenes"
    data_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"size": 64, "train": 1500, "val": 200, "test": 300}
    )
    model: str = "deeplab"
    model_kwargs: dict[str, Any] = field(default_factory=lambda: dict(TINY_DEEPLAB))
    subsets: tuple[tuple[str, ...], ...] = (("seg", "depth"),)
    ratios: tuple[float, ...] = (0.5,)
    methods: tuple[str, ...] = ("cut", "disparse", "tp-magnitude", "tp-taylor", "cut-weight",
                                "magnitude-weight")  # fmt: skip
    seeds: tuple[int, ...] = (0,)
    pretrain_epochs: int = 15
    pretrain_lr: float = 2e-3
    batch_size: int = 32
    score_batches: int = 10
    budgets: dict[str, int] = field(default_factory=lambda: {"short": 50, "long": 200})
    finetune_lr: float = 1e-3
    eval_every: int = 50
    paper_budget: bool = False
    latency_repeats: int = 5

    def __post_init__(self) -> None:
        check_table(self.methods, self.ratios, self.subsets)
        if not self.seeds:
            raise ValueError("seeds is empty: give at least one seed")
        if not self.budgets or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in self.budgets.values()
        ):
            raise ValueError(f"budgets must map names to positive step counts, got {self.budgets}")
        if "0" in self.budgets or "paper" in self.budgets:
            raise ValueError(
                "budget names '0' and 'paper' are reserved (no fine-tuning; the paper's)"
            )
        if self.eval_every < 1:
            raise ValueError(
                f"eval_every must be a positive number of steps, got {self.eval_every}"
            )


def _stream(data: TaskData, batch_size: int, seed: int) -> Iterator:
    for epoch in itertools.count():
        yield from batches(data.train, batch_size, seed=seed * 7919 + epoch)


def _curve(
    pruned: nn.Module,
    masks: Mapping[str, torch.Tensor] | None,
    ctx: Context,
    dense_val: Mapping[str, Mapping[str, float]],
    budgets: Mapping[str, int],
    lr: float,
    eval_every: int,
) -> dict[str, dict[str, Any]]:
    """One Adam run; per budget the test metrics of the best-on-validation checkpoint so far.

    Key ``"0"``: the model before any step (its test metrics are read in the first check).
    """
    data, tasks = ctx.data, ctx.tasks
    model = copy.deepcopy(pruned)
    val = data.val if data.val is not None else data.test
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    stream = _stream(data, ctx.config.batch_size, ctx.seed)
    marks = sorted(
        set(range(eval_every, max(budgets.values()) + 1, eval_every)) | set(budgets.values())
    )
    best: dict[str, Any] = {}

    def check(step: int) -> None:
        scores = dense_scores(model, data, val, tasks=tasks)
        value = task_delta_m(data, scores, dense_val, tasks)
        if not best or value > best["val_delta_m"]:
            best.update(step=step, val_delta_m=value, test=dense_scores(model, data, tasks=tasks))

    check(0)
    points: dict[str, dict[str, Any]] = {"0": copy.deepcopy(best)}
    done = 0
    for mark in marks:
        train_tasks(model, stream, ctx.losses(), steps=mark - done, optimizer=optimizer,
                    masks=masks, progress=False)  # fmt: skip
        done = mark
        check(done)
        for name, steps in budgets.items():
            if steps == done:
                points[name] = copy.deepcopy(best)
    return points


def _measure(model: nn.Module, data: TaskData, repeats: int) -> dict[str, float]:
    x1, x16 = data.test.inputs[:1], data.test.inputs[:16]
    macs, params = count_macs(model, x1)
    return {
        "macs": macs,
        "params": params,
        "latency_b1_ms": latency_ms(model, x1, repeats=repeats),
        "latency_b16_ms": latency_ms(model, x16, repeats=repeats),
    }


def _point(data: TaskData, scores: dict, dense: dict, tasks: Sequence[str]) -> dict[str, Any]:
    return {"test": scores, "delta_m": task_delta_m(data, scores, dense, tasks)}


AXES = ("subsets", "ratios", "methods", "seeds")
"""The settings the dense part's cells iterate over; every other setting is in each cell's key."""

_SEED: dict[tuple, dict[str, Any]] = {}
"""One seed's data, pre-trained model and dense scores per subset, kept between its cells."""


def _seed_context(config: DenseSuiteConfig, run_seed: int, cache_dir: str, device: str,
                  progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """The data and pre-trained model of ``run_seed`` (one seed held at a time, per process)."""
    key = (cell_settings(config, AXES), run_seed, str(cache_dir), device)
    if key not in _SEED:
        _SEED.clear()
        data = load_data(config.data, **{"seed": run_seed, **config.data_kwargs})
        model = pretrained(
            config.model, data, seed=run_seed, cache_dir=cache_dir,
            model_kwargs=config.model_kwargs, epochs=config.pretrain_epochs,
            lr=config.pretrain_lr, batch_size=config.batch_size, progress=progress, device=device,
        )  # fmt: skip
        _SEED[key] = {"data": data, "model": model, "dense": {}}
    return _SEED[key]


def _dense_of(context: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    """The dense model of ``tasks`` and its test and validation scores (once per seed and subset)."""
    name = "+".join(tasks)
    if name not in context["dense"]:
        data = context["data"]
        dense_model = select_tasks(context["model"], tasks)
        val = data.val if data.val is not None else data.test
        context["dense"][name] = {
            "model": dense_model,
            "test": dense_scores(dense_model, data, tasks=tasks),
            "val": dense_scores(dense_model, data, val, tasks=tasks),
        }
    return context["dense"][name]


def dense_cell(config: DenseSuiteConfig, run_seed: int, tasks: list[str], ratio: float,
               name: str, cache_dir: str, device: str) -> dict[str, Any]:  # fmt: skip
    """One row of the dense tables: method ``name`` at ``ratio`` on ``tasks``, seed ``run_seed``."""
    context = _seed_context(config, run_seed, cache_dir, device)
    data, dense = context["data"], _dense_of(context, tasks)
    ctx = Context(context["model"], data, tasks, ratio, config, run_seed)
    torch.manual_seed(run_seed)
    (pruned, masks), seconds = timed(lambda: CUT_METHODS[name](ctx))
    curve = _curve(pruned, masks, ctx, dense["val"], dict(config.budgets), config.finetune_lr,
                   config.eval_every)  # fmt: skip
    if config.paper_budget:
        paper = _curve(pruned, masks, ctx, dense["val"], {"paper": int(PAPER_BUDGET["steps"])},
                       PAPER_BUDGET["lr"], config.eval_every)  # fmt: skip
        paper.pop("0")
        curve.update(paper)
    before = curve.pop("0")["test"]
    points = {"0": {"step": 0, **_point(data, before, dense["test"], tasks)}}
    for budget, chosen in curve.items():
        points[budget] = {"step": chosen["step"], "val_delta_m": chosen["val_delta_m"],
                          **_point(data, chosen["test"], dense["test"], tasks)}  # fmt: skip
    return {
        "seed": run_seed, "tasks": tasks, "ratio": ratio, "method": name,
        "granularity": "weight" if name.endswith("-weight") else "channel",
        "budgets": points, "method_seconds": seconds,
        "sparsity": mask_sparsity(masks) if masks else None,
        "threads": torch.get_num_threads(),
        **_measure(pruned, data, config.latency_repeats),
    }  # fmt: skip


def run_dense_suite(
    config: DenseSuiteConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    cache_dir: str | os.PathLike[str] = ".cache/cut-pam",
    device: str = "cpu",
    cells: Cells | None = None,
) -> dict[str, Any]:
    """Every method on every seed × subset × ratio; ``{"config", "dense", "rows"}``.

    The suite's ``seed`` offsets ``config.seeds``. ``device``: where the models
    train, are pruned and evaluated (:mod:`benchmarks.devices`; latencies stay CPU). Each row holds the method's
    test metrics and Δm (vs the dense model of its seed) per budget, the
    validation-chosen step, params, MACs, latency and the method's run time.
    ``cells``: where each finished row is stored and how many worker processes
    compute the rows (:mod:`benchmarks.cells`; default: in-process, not stored).
    The models are pre-trained (or read from the cache) here, before any cell.
    """
    cells = cells or Cells()
    seeds = [seed + s for s in config.seeds]
    cache = str(cache_dir)
    settings = cell_settings(config, AXES)
    # subset by subset (every seed of a subset before the next), so an interrupted run holds
    # whole tables; the rows are returned seed by seed, as the tables read them
    cases = [(s, sub, r, m) for sub in config.subsets for s in seeds for r in config.ratios
             for m in config.methods]  # fmt: skip
    work = [
        Cell({"part": "dense", "settings": settings, "seed": s, "tasks": list(sub), "ratio": r,
              "method": m}, dense_cell, (config, s, list(sub), r, m, cache, device))
        for s, sub, r, m in cases
    ]  # fmt: skip
    # the dense models of every seed, pre-trained here before any cell; with
    # cells.compute False (only the stored rows are read) of the seeds with a stored row
    values = None if cells.compute else run_cells(cells, work, progress=False)
    stored = set() if values is None else {c[0] for c, v in zip(cases, values, strict=True) if v}
    wanted = seeds if values is None else [s for s in seeds if s in stored]
    dense_rows: list[dict[str, Any]] = []
    for run_seed in tqdm(wanted, desc="dense models", disable=not progress or len(wanted) < 2):
        context = _seed_context(config, run_seed, cache, device, progress=progress)
        for subset in config.subsets:
            tasks = list(subset)
            dense = _dense_of(context, tasks)
            dense_rows.append({
                "seed": run_seed, "tasks": tasks, "test": dense["test"], "val": dense["val"],
                **_measure(dense["model"], context["data"], config.latency_repeats),
            })  # fmt: skip
    _SEED.clear()  # the data and models of the last seed are not held after the part
    if values is None:
        values = run_cells(cells, work, desc="dense CUT suite", progress=progress)
    done = dict(zip(cases, values, strict=True))
    _SEED.clear()
    rows = [done[s, sub, r, m] for s in seeds for sub in config.subsets for r in config.ratios
            for m in config.methods if done[s, sub, r, m] is not None]  # fmt: skip
    partial = partial_count(cells, values)
    return {"config": asdict(config), "dense": dense_rows, "rows": rows, **partial}


def data_settings(data: str, root: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The dense part's settings for ``--data`` / ``--data-root``.

    Real data gets the papers' model (:data:`benchmarks.dense_models.PAPER_DEEPLAB`,
    a DeepLab ResNet-34) and, for Cityscapes (no normals), the seg + depth subset.
    """
    if data not in DENSE_DATA:
        raise ValueError(f"--data must be one of {list(DENSE_DATA)}, got {data!r}")
    if data == "scenes":
        if root is not None:
            raise ValueError("--data-root is for --data nyuv2 or cityscapes; scenes are generated")
        return {}
    if root is None:
        raise ValueError(
            f"--data {data} needs --data-root DIR (MTAN/LibMTL's preprocessed folders)"
        )
    settings: dict[str, Any] = {
        "data": data,
        "data_kwargs": {"root": os.fspath(root)},
        "model_kwargs": dict(PAPER_DEEPLAB),
    }
    if data == "cityscapes":
        settings["subsets"] = (("seg", "depth"),)
    return settings


PART = Part(
    name="dense",
    title="CUT on dense multi-task scenes (segmentation, depth, normals): the papers' setting",
    config=DenseSuiteConfig,
    run=run_dense_suite,
    render=dense_tables,
    summary=dense_summaries,
    plots=plot_dense,
    needs=lambda config: [
        *data_needs(config.data, config.data_kwargs),
        *[module_need("nni", f"method {m}") for m in config.methods if m.startswith("nni-")],
    ],
    headline=dense_headline,
    devices=("cpu", "cuda"),
    cells=True,
)
