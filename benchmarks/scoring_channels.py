"""Time of the channel criterion (``criterion="activation"``) against the plain loop.

``cut_plugin.score_channels`` scores conv/linear output channels from activation
gradients (no weight gradient); the structured CUT path can use it instead of the
element scores. Issue 14's goal: time <= 0.6× the plain loop (1 forward + T
backward over every parameter) measured in the same run.

On the benchmark ResNet, to keep the quick suite short, each repeat runs the
plain loop and then the channel criterion on the first ``channel_batches``
batches, right after the part's own loop over all of them (medians over the
repeats; the channel call's fixed costs — checks, hooks, state — count against
it). Both are timed without the memory sampler, whose first step returns freed
heap pages to the OS. Comparing one batch of the criterion with the per-batch
time of the 10-batch loop was tried and dropped: on a shared machine the
per-batch time of separate calls varied by up to 2× between runs. On the
ResNet-34-layout DeepLab with three ASPP heads the loop and the channel criterion
both run on the masks measurement's batches, after its ``score_tasks`` calls, when
the part runs its probes (the quick suite does not).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from benchmarks.measure import timed
from cut_plugin import score_channels

__all__ = ["channel_headline", "channel_rows", "channel_summary", "time_channels"]


def time_channels(model: nn.Module, data: Sequence[Any], losses: dict) -> float:
    """Seconds of ``score_channels`` on ``data``."""
    return timed(lambda: score_channels(model, data, losses, progress=False))[1]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def channel_summary(
    loop: list[float],
    channel: list[float],
    *,
    loop_batches: int,
    channel_batches: int,
) -> dict[str, Any]:
    """Medians of the repeats and the per-batch time ratio (channel ÷ plain loop)."""
    loop_seconds, seconds = _median(loop), _median(channel)
    per_batch, loop_per_batch = seconds / channel_batches, loop_seconds / loop_batches
    return {
        "seconds": seconds,
        "batches": channel_batches,
        "seconds_per_batch": per_batch,
        "loop_seconds": loop_seconds,
        "loop_batches": loop_batches,
        "loop_seconds_per_batch": loop_per_batch,
        "time_ratio": per_batch / loop_per_batch,
        "repeats": len(channel),
    }


def measure_pair(
    repeats: int, loop: Callable[[], None], model: nn.Module, data: Sequence[Any], losses: dict
) -> tuple[list[float], list[float]]:
    """Seconds of ``repeats`` interleaved runs of ``loop`` and of the channel criterion."""
    loops, channels = [], []
    for _ in range(max(1, repeats)):
        loops.append(timed(loop)[1])
        channels.append(time_channels(model, data, losses))
    return loops, channels


def channel_rows(summary: dict[str, Any], label: str) -> list[list[str]]:
    """Table rows: the channel criterion's time per batch and its ratio to the loop's."""
    return [
        [
            label,
            f"{summary['batches']} (loop {summary['loop_batches']})",
            f"{summary['seconds_per_batch']:.3f}",
            f"{summary['loop_seconds_per_batch']:.3f}",
            f"{summary['time_ratio']:.2f}",
        ]
    ]


CHANNEL_HEADER = ["channel criterion", "batches", "s / batch", "loop s / batch", "time ÷ loop"]


def channel_headline(summary: dict[str, Any], setting: dict[str, Any]) -> dict[str, Any]:
    """One ``scoring.channel_time_ratio`` entry (BENCHMARKS.md) for ``setting``."""
    return {
        "id": "scoring.channel_time_ratio",
        "setting": {
            **setting,
            "criterion": "activation (Σ_b|Σ a·∂L_t/∂a| per output channel)",
            "channel_batches": summary["batches"],
            "loop_batches": summary["loop_batches"],
            "seconds_per_batch": summary["seconds_per_batch"],
            "loop_seconds_per_batch": summary["loop_seconds_per_batch"],
            "baseline": "1 forward + T autograd.grad over all parameters, per batch",
        },
        "value": summary["time_ratio"],
        "unit": "× plain loop time",
        "goal": "<= 0.6",
    }
