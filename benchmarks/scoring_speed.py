"""Overhead of ``score_tasks`` against the plain loop it replaces, in time and peak memory.

The baseline is what a user would write by hand: per batch one forward, then one
backward per task (``torch.autograd.grad`` with the graph retained), nothing
accumulated. ``score_tasks`` additionally validates, accumulates per-task
scores and restores the model's state; the goal is a time ratio <= 1.15.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from benchmarks.data import batches, load_data
from benchmarks.measure import peak_memory
from benchmarks.models import build_model
from cut_plugin import score_tasks

__all__ = ["ScoringConfig", "run_scoring_speed"]


@dataclass(frozen=True)
class ScoringConfig:
    """Model, data and repeats for the overhead measurement."""

    model: str = "resnet18"
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"width": 16, "blocks": [1, 1, 1, 1]}
    )
    data: str = "multi_head"
    batches: int = 10
    batch_size: int = 64
    repeats: int = 3


def _plain_loop(model: nn.Module, data: list, losses: dict) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for inputs, targets in data:
        outputs = model(inputs)
        tasks = list(losses)
        for i, task in enumerate(tasks):
            loss = losses[task](outputs[task], targets[task])
            torch.autograd.grad(loss, params, retain_graph=i < len(tasks) - 1, allow_unused=True)


def run_scoring_speed(
    config: ScoringConfig, *, seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    """Median time and peak memory of both, over ``repeats`` runs each, interleaved."""
    data = load_data(config.data, seed=seed)
    torch.manual_seed(seed)
    model = build_model(config.model, tasks=data.num_classes, **config.model_kwargs).eval()
    data_batches = list(
        itertools.islice(batches(data.train, config.batch_size, seed=seed), config.batches)
    )
    losses = data.losses()
    runs: dict[str, list[tuple[float, float]]] = {"score_tasks": [], "plain_loop": []}
    for _ in range(config.repeats):
        runs["plain_loop"].append(peak_memory(lambda: _plain_loop(model, data_batches, losses)))
        runs["score_tasks"].append(
            peak_memory(lambda: score_tasks(model, data_batches, losses, progress=False))
        )
    summary: dict[str, Any] = {"config": asdict(config), "tasks": list(losses)}
    for name, values in runs.items():
        seconds = sorted(v[1] for v in values)
        memory = sorted(v[0] for v in values)
        summary[name] = {
            "seconds": seconds[len(seconds) // 2],
            "peak_mib": memory[len(memory) // 2],
        }
    summary["time_ratio"] = summary["score_tasks"]["seconds"] / summary["plain_loop"]["seconds"]
    plain_memory = summary["plain_loop"]["peak_mib"]
    summary["memory_ratio"] = (
        summary["score_tasks"]["peak_mib"] / plain_memory if plain_memory > 0 else None
    )
    return summary


def run_scoring_memory(
    *,
    widths: tuple[int, ...] = (8, 16, 32),
    counts: tuple[int, ...] = (4, 16),
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Peak RSS growth of ``score_tasks`` by model width × number of batches.

    The accumulators are one tensor per parameter per task, so the peak should
    grow with the model and stay flat in the number of batches.
    """
    data = load_data("multi_head", seed=seed)
    losses = data.losses()
    all_batches = list(itertools.islice(batches(data.train, batch_size, seed=seed), max(counts)))
    rows = []
    for width in widths:
        torch.manual_seed(seed)
        model = build_model(
            "resnet18", tasks=data.num_classes, width=width, blocks=[1, 1, 1, 1]
        ).eval()
        params = sum(p.numel() for p in model.parameters())
        for count in counts:
            peak, seconds = peak_memory(
                lambda model=model, count=count: score_tasks(
                    model, all_batches[:count], losses, progress=False
                )
            )
            rows.append(
                {
                    "width": width,
                    "params": params,
                    "batches": count,
                    "peak_mib": peak,
                    "seconds": seconds,
                }
            )
    return {"rows": rows, "batch_size": batch_size}


def render_memory(metrics: dict[str, Any]) -> str:
    """Markdown: peak memory of score_tasks per width (rows) and batch count (columns)."""
    counts = sorted({r["batches"] for r in metrics["rows"]})
    header = "| width | params | " + " | ".join(f"{c} batches (MiB)" for c in counts) + " |"
    lines = [header, "|" + "---|" * (2 + len(counts))]
    for width in sorted({r["width"] for r in metrics["rows"]}):
        rows = {r["batches"]: r for r in metrics["rows"] if r["width"] == width}
        first = next(iter(rows.values()))
        cells = " | ".join(f"{rows[c]['peak_mib']:.1f}" for c in counts)
        lines.append(f"| {width} | {first['params']:,} | {cells} |")
    return "\n".join(lines)
