"""Does a compact model turn its MAC reduction into CPU latency? By model width.

CUT at 50 % of channels on ResNet-18-style multi-task models of growing width
(random weights: this measures speed, not accuracy), batch 64, one CPU thread.
Goal: latency speed-up >= 0.8 of the MAC reduction. Small layers are dominated
by per-op overhead (BatchNorm, ReLU, adds, memory traffic) that MACs do not count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from adapters.registry import build
from adapters.torch_pruning import count_macs
from benchmarks.measure import latency_ms
from benchmarks.models import build_model
from benchmarks.part import Part

__all__ = [
    "PART",
    "LatencyScalingConfig",
    "latency_scaling_summaries",
    "render_latency_scaling",
    "run_latency_scaling",
]

TASKS = {"digit": 10, "parity": 2, "ge5": 2}


@dataclass(frozen=True)
class LatencyScalingConfig:
    """Model widths, CUT's pruning ratio, the timed batch and the latency repeats."""

    widths: tuple[int, ...] = (16, 32, 64)
    ratio: float = 0.5
    batch: int = 64
    repeats: int = 10


def run_latency_scaling(
    config: LatencyScalingConfig | None = None, *, seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    """Latency and MACs of dense vs CUT-compact models per width."""
    config = LatencyScalingConfig() if config is None else config
    widths, ratio, batch, repeats = config.widths, config.ratio, config.batch, config.repeats
    rows = []
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, 28, 28, generator=generator)
    data = [
        (x[:16], {t: torch.randint(0, c, (16,), generator=generator) for t, c in TASKS.items()})
    ]
    losses = dict.fromkeys(TASKS, F.cross_entropy)
    bar = tqdm(widths, desc="latency scaling", unit="width", disable=not progress)
    for width in bar:
        bar.set_postfix(width=width)
        torch.manual_seed(seed)
        dense = build_model("resnet18", tasks=TASKS, width=width, blocks=[1, 1, 1, 1]).eval()
        compact = build(
            {"prune": "cut", "framework": "torch_pruning"},
            model=dense,
            example_inputs=x[:1],
            tasks=list(TASKS),
            losses=losses,
            data=data,
            pruning_ratio=ratio,
            progress=False,
        )
        dense_macs, _ = count_macs(dense, x[:1])
        compact_macs, _ = count_macs(compact, x[:1])
        dense_ms = latency_ms(dense, x, repeats=repeats)
        compact_ms = latency_ms(compact, x, repeats=repeats)
        rows.append({
            "width": width,
            "dense_macs": dense_macs,
            "compact_macs": compact_macs,
            "dense_ms": dense_ms,
            "compact_ms": compact_ms,
            "mac_reduction": dense_macs / compact_macs,
            "speedup": dense_ms / compact_ms,
            "efficiency": (dense_ms / compact_ms) / (dense_macs / compact_macs),
        })  # fmt: skip
    return {"ratio": ratio, "batch": batch, "rows": rows}


def render_latency_scaling(metrics: dict[str, Any]) -> str:
    """Markdown table: width, MACs, latency, speed-up / MAC reduction."""
    lines = [
        "| width | MACs dense → compact | latency dense → compact (ms) | speed-up | MAC reduction | speed-up / MAC red. |",
        "|---|---|---|---|---|---|",
    ]
    for r in metrics["rows"]:
        lines.append(
            f"| {r['width']} | {r['dense_macs'] / 1e6:.2f}M → {r['compact_macs'] / 1e6:.2f}M | "
            f"{r['dense_ms']:.2f} → {r['compact_ms']:.2f} | {r['speedup']:.2f}× | {r['mac_reduction']:.2f}× | "
            f"{r['efficiency']:.2f} |"
        )
    return (
        "\n".join(lines)
        + f"\n\nCUT at {metrics['ratio']:.0%} of channels, batch {metrics['batch']}, one CPU thread."
    )


def latency_scaling_summaries(metrics: dict[str, Any]) -> list[str]:
    """One line: the efficiency per width."""
    parts = ", ".join(f"width {r['width']}: {r['efficiency']:.2f}" for r in metrics["rows"])
    return [
        f"compact latency speed-up / MAC reduction at batch {metrics['batch']}: {parts} (goal >= 0.8)"
    ]


PART = Part(
    name="latency_scaling",
    title="Latency speed-up against MAC reduction, by width",
    config=LatencyScalingConfig,
    run=run_latency_scaling,
    render=render_latency_scaling,
    summary=latency_scaling_summaries,
)
