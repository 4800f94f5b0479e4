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
from tqdm.auto import tqdm

from benchmarks.data import batches, load_data
from benchmarks.markdown import table
from benchmarks.measure import peak_memory
from benchmarks.models import build_model
from benchmarks.needs import data_needs
from benchmarks.part import Part
from cut_plugin import score_tasks

__all__ = ["PART", "ScoringConfig", "render_scoring", "run_scoring_speed", "scoring_summaries"]


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
    for _ in tqdm(range(config.repeats), desc="scoring", unit="repeat", disable=not progress):
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


def render_scoring(scoring: dict[str, Any]) -> str:
    """Markdown: time and peak memory of the plain loop and of ``score_tasks``, and their ratio."""
    s, p = scoring["score_tasks"], scoring["plain_loop"]
    memory = scoring.get("memory_ratio")
    return table(
        ["", "time (s)", "peak RSS growth (MiB)"],
        [
            [
                "plain loop (1 forward + 1 backward per task)",
                f"{p['seconds']:.2f}",
                f"{p['peak_mib']:.1f}",
            ],
            ["`score_tasks`", f"{s['seconds']:.2f}", f"{s['peak_mib']:.1f}"],
            ["ratio", f"{scoring['time_ratio']:.2f}", f"{memory:.2f}" if memory else "–"],
        ],
    )


def scoring_summaries(scoring: dict[str, Any]) -> list[str]:
    """One line: the time (and memory) ratio of ``score_tasks`` to the plain loop."""
    memory = scoring.get("memory_ratio")
    return [
        f"score_tasks vs plain loop: time ×{scoring['time_ratio']:.2f}"
        + (f", peak memory ×{memory:.2f}" if memory else "")
    ]


PART = Part(
    name="scoring",
    title="Overhead of `score_tasks`",
    config=ScoringConfig,
    run=run_scoring_speed,
    render=render_scoring,
    summary=scoring_summaries,
    needs=lambda config: data_needs(config.data),
)
