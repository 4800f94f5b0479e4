"""Peak memory of ``score_tasks``: it should grow with the model, not with the data.

The accumulators are one tensor per parameter per task, so the peak should grow
with the model width and stay flat in the number of batches scored.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from benchmarks.data import batches, load_data
from benchmarks.measure import peak_memory
from benchmarks.models import build_model
from benchmarks.needs import data_needs
from benchmarks.part import Part
from cut_plugin import score_tasks

__all__ = ["PART", "ScoringMemoryConfig", "render_memory", "run_scoring_memory"]


@dataclass(frozen=True)
class ScoringMemoryConfig:
    """Widths of the ResNet-18-style model and batch counts to score."""

    widths: tuple[int, ...] = (8, 16, 32)
    counts: tuple[int, ...] = (4, 16)
    batch_size: int = 64


def run_scoring_memory(
    config: ScoringMemoryConfig | None = None, *, seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    """Peak RSS growth of ``score_tasks`` by model width × number of batches."""
    config = ScoringMemoryConfig() if config is None else config
    widths, counts, batch_size = config.widths, config.counts, config.batch_size
    data = load_data("multi_head", seed=seed)
    losses = data.losses()
    all_batches = list(itertools.islice(batches(data.train, batch_size, seed=seed), max(counts)))
    rows = []
    bar = tqdm(widths, desc="scoring memory", unit="width", disable=not progress)
    for width in bar:
        bar.set_postfix(width=width)
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


PART = Part(
    name="scoring_memory",
    title="Peak memory of `score_tasks`: grows with the model, not the data",
    config=ScoringMemoryConfig,
    run=run_scoring_memory,
    render=render_memory,
    needs=lambda config: data_needs("multi_head"),
)
