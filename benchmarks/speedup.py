"""Does a compact model turn its MAC reduction into CPU latency? By model width.

CUT at 50 % of channels on ResNet-18-style multi-task models of growing width
(random weights: this measures speed, not accuracy), batch 64, one CPU thread.
Goal: latency speed-up >= 0.8 of the MAC reduction. Small layers are dominated
by per-op overhead (BatchNorm, ReLU, adds, memory traffic) that MACs do not count.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

import adapters.torch_pruning as atp
from benchmarks.measure import latency_ms
from benchmarks.models import build_model

__all__ = ["render_speedup", "run_speedup"]

TASKS = {"digit": 10, "parity": 2, "ge5": 2}


def run_speedup(
    *,
    widths: tuple[int, ...] = (16, 32, 64),
    ratio: float = 0.5,
    batch: int = 64,
    repeats: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Latency and MACs of dense vs CUT-compact models per width."""
    rows = []
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, 28, 28, generator=generator)
    data = [
        (x[:16], {t: torch.randint(0, c, (16,), generator=generator) for t, c in TASKS.items()})
    ]
    losses = dict.fromkeys(TASKS, F.cross_entropy)
    for width in widths:
        torch.manual_seed(seed)
        dense = build_model("resnet18", tasks=TASKS, width=width, blocks=[1, 1, 1, 1]).eval()
        compact = atp.cut_prune(
            dense,
            x[:1],
            tasks=list(TASKS),
            losses=losses,
            data=data,
            pruning_ratio=ratio,
            progress=False,
        )
        dense_macs, _ = atp.count_macs(dense, x[:1])
        compact_macs, _ = atp.count_macs(compact, x[:1])
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


def render_speedup(metrics: dict[str, Any]) -> str:
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


def speedup_summaries(metrics: dict[str, Any]) -> list[str]:
    """One line: the efficiency per width."""
    parts = ", ".join(f"width {r['width']}: {r['efficiency']:.2f}" for r in metrics["rows"])
    return [
        f"compact latency speed-up / MAC reduction at batch {metrics['batch']}: {parts} (goal >= 0.8)"
    ]
