"""Time and peak memory of ``score_tasks`` against the plain loop, and of ``cut_masks`` against scoring.

The scoring baseline is what a user would write by hand: per batch one forward,
then one backward per task (``torch.autograd.grad`` over every parameter, the
graph retained but for the last task), nothing accumulated. ``score_tasks``
additionally validates, accumulates per-task scores and restores the model's
state. Issue 14's goals: time ratio <= 0.6 with peak memory <= 1.3× the loop's,
the element scores exact.

Probes (same run, interleaved) bound what an exact criterion can reach: the loop
with gradients for the conv/linear weights only, the loop with gradients for the
conv/linear *outputs* only (no weight gradient at all: what channel scores from
activation gradients would cost), and the forward passes alone.

``scoring.channel_time_ratio``: the opt-in channel criterion (``criterion=
"activation"``, ``cut_plugin.score_channels``: activation gradients only) against
the plain loop on the same batches, in the same run: on this ResNet (the first
``channel_batches`` batches) and, with the probes (``channel_aspp``), on the ASPP
model below; see
``benchmarks/scoring_channels.py``. Goal <= 0.6.

``masks.time_ratio``: ``cut_masks`` (calibrated vote) over ``score_tasks`` on a
ResNet-34-layout backbone (blocks 3, 4, 6, 3) with three ASPP-style heads,
defined here (random inputs and dense targets: the timings do not depend on the
values). Goal <= 0.25. ``cut_masks`` runs on the scores that repeat's
``score_tasks`` returned, so its time holds no scoring: the whole call (checks,
normalisation, the calibrated search, the split into masks) under the same torch
threads. Being short, it runs ``masks_calls`` times per repeat (median), so one
descheduling on a shared machine does not make the headline.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from benchmarks.data import batches, load_data
from benchmarks.dense_models import build_deeplab
from benchmarks.markdown import table
from benchmarks.measure import peak_memory, timed
from benchmarks.models import build_model
from benchmarks.needs import data_needs
from benchmarks.part import Part
from benchmarks.scoring_channels import (
    CHANNEL_HEADER,
    channel_headline,
    channel_rows,
    channel_summary,
    measure_pair,
)
from benchmarks.scoring_loops import (
    activations_only_loop,
    forward_only,
    plain_loop,
    weights_only_loop,
)
from cut_plugin import cut_masks, score_tasks

__all__ = [
    "PART",
    "ScoringConfig",
    "build_aspp_resnet",
    "render_scoring",
    "run_scoring_speed",
    "scoring_headline",
    "scoring_summaries",
]


@dataclass(frozen=True)
class ScoringConfig:
    """Model, data, threads and repeats for the scoring and the masks measurements."""

    model: str = "resnet18"
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"width": 16, "blocks": [1, 1, 1, 1]}
    )
    data: str = "multi_head"
    batches: int = 10
    batch_size: int = 64
    repeats: int = 3
    threads: int = 2
    probes: bool = True
    channel_batches: int = 1  # the channel criterion timed on this many of the batches (0: off)
    channel_aspp: bool = True  # and against the plain loop on the ASPP model (with probes)
    masks_width: int = 16
    masks_blocks: tuple[int, ...] = (3, 4, 6, 3)
    masks_head_width: int = 32
    masks_input_size: int = 32
    masks_batches: int = 2
    masks_batch_size: int = 16
    masks_ratio: float = 0.5
    masks_repeats: int = 2
    masks_calls: int = 3


ASPP_TASKS = {"seg": 8, "depth": 1, "normal": 3}


def build_aspp_resnet(
    *, width: int = 16, blocks: Sequence[int] = (3, 4, 6, 3), head_width: int = 32
) -> nn.Module:
    """The zoo's DeepLab (:func:`benchmarks.dense_models.build_deeplab`) in the ResNet-34 layout:
    stride-2 stem, stages strided 1, 2, 1, 1 and dilated 1, 1, 2, 4, three ASPP heads (rates 1–4)."""
    return build_deeplab(ASPP_TASKS, in_channels=3, width=width, blocks=blocks,
                         head_width=head_width)  # fmt: skip


def _aspp_data(config: ScoringConfig, seed: int) -> tuple[list, dict[str, Callable]]:
    g = torch.Generator().manual_seed(seed)
    size, n = config.masks_input_size, config.masks_batch_size
    data = [
        (
            torch.randn(n, 3, size, size, generator=g),
            {
                "seg": torch.randint(0, ASPP_TASKS["seg"], (n, size, size), generator=g),
                "depth": torch.randn(n, 1, size, size, generator=g),
                "normal": torch.randn(n, 3, size, size, generator=g),
            },
        )
        for _ in range(config.masks_batches)
    ]
    return data, {"seg": nn.CrossEntropyLoss(), "depth": nn.L1Loss(), "normal": nn.MSELoss()}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _measure_scoring(config: ScoringConfig, seed: int, progress: bool) -> dict[str, Any]:
    data = load_data(config.data, seed=seed)
    torch.manual_seed(seed)
    model = build_model(config.model, tasks=data.num_classes, **config.model_kwargs).eval()
    data_batches = list(
        itertools.islice(batches(data.train, config.batch_size, seed=seed), config.batches)
    )
    losses = data.losses()
    runs: dict[str, list[tuple[float, float]]] = {"score_tasks": [], "plain_loop": []}
    probes: dict[str, Callable[[nn.Module, list, dict], None]] = {}
    if config.probes:
        probes = {
            "weights_only": weights_only_loop,
            "activations_only": activations_only_loop,
            "forward_only": forward_only,
        }
    for name in probes:
        runs[name] = []
    few = data_batches[: config.channel_batches]
    paired: list[float] = []
    channel_runs: list[float] = []
    for _ in tqdm(range(config.repeats), desc="scoring", unit="repeat", disable=not progress):
        runs["plain_loop"].append(peak_memory(lambda: plain_loop(model, data_batches, losses)))
        if few:  # the loop again on the channel criterion's batches, paired with it
            loop_seconds, channel_seconds = measure_pair(
                1, lambda: plain_loop(model, few, losses), model, few, losses
            )
            paired += loop_seconds
            channel_runs += channel_seconds
        runs["score_tasks"].append(
            peak_memory(lambda: score_tasks(model, data_batches, losses, progress=False))
        )
        for name, probe in probes.items():
            runs[name].append(peak_memory(lambda probe=probe: probe(model, data_batches, losses)))
    summary: dict[str, Any] = {"config": asdict(config), "tasks": list(losses)}
    for name, values in runs.items():
        summary[name] = {
            "seconds": _median([v[1] for v in values]),
            "peak_mib": _median([v[0] for v in values]),
        }
    loop = summary["plain_loop"]
    summary["time_ratio"] = summary["score_tasks"]["seconds"] / loop["seconds"]
    summary["memory_ratio"] = (
        summary["score_tasks"]["peak_mib"] / loop["peak_mib"] if loop["peak_mib"] > 0 else None
    )
    summary["probe_ratios"] = {name: summary[name]["seconds"] / loop["seconds"] for name in probes}
    if channel_runs:
        summary["channel"] = channel_summary(
            paired, channel_runs, loop_batches=len(few), channel_batches=len(few)
        )
    return summary


def _measure_masks(config: ScoringConfig, seed: int, progress: bool) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = build_aspp_resnet(
        width=config.masks_width, blocks=config.masks_blocks, head_width=config.masks_head_width
    ).eval()
    data, losses = _aspp_data(config, seed)
    score_seconds, mask_seconds = [], []
    for _ in tqdm(range(config.masks_repeats), desc="masks", unit="repeat", disable=not progress):
        scores, seconds = timed(lambda: score_tasks(model, data, losses, progress=False))
        score_seconds.append(seconds)
        for _ in range(max(1, config.masks_calls)):
            _, seconds = timed(
                functools.partial(cut_masks, model, scores, pruning_ratio=config.masks_ratio)
            )
            mask_seconds.append(seconds)
    loops, channels = (
        measure_pair(
            config.masks_repeats, lambda: plain_loop(model, data, losses), model, data, losses
        )
        if config.probes and config.channel_aspp
        else ([], [])
    )
    score_time, mask_time = _median(score_seconds), _median(mask_seconds)
    result = {
        "params": sum(p.numel() for p in model.parameters()),
        "tasks": list(losses),
        "score_tasks_seconds": score_time,
        "cut_masks_seconds": mask_time,
        "time_ratio": mask_time / score_time,
    }
    if channels:
        result["channel"] = channel_summary(
            loops, channels, loop_batches=len(data), channel_batches=len(data)
        )
    return result


def run_scoring_speed(
    config: ScoringConfig, *, seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    """Median time and peak memory over ``repeats`` interleaved runs; the masks-to-scoring ratio."""
    previous = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        summary = _measure_scoring(config, seed, progress)
        summary["masks"] = _measure_masks(config, seed, progress)
    finally:
        torch.set_num_threads(previous)
    return summary


def render_scoring(scoring: dict[str, Any]) -> str:
    """Markdown: time and peak memory of the plain loop, ``score_tasks`` and the probes; masks."""
    s, p = scoring["score_tasks"], scoring["plain_loop"]
    memory = scoring.get("memory_ratio")
    rows = [
        [
            "plain loop (1 forward + 1 backward per task)",
            f"{p['seconds']:.2f}",
            f"{p['peak_mib']:.1f}",
            "1.00",
        ],
        [
            "`score_tasks`",
            f"{s['seconds']:.2f}",
            f"{s['peak_mib']:.1f}",
            f"{scoring['time_ratio']:.2f} (memory {memory:.2f})"
            if memory
            else f"{scoring['time_ratio']:.2f}",
        ],
    ]
    labels = {
        "weights_only": "probe: loop, conv/linear weight gradients only",
        "activations_only": "probe: loop, conv/linear output gradients only",
        "forward_only": "probe: forwards only",
    }
    for name, ratio in scoring.get("probe_ratios", {}).items():
        probe = scoring[name]
        rows.append(
            [labels[name], f"{probe['seconds']:.2f}", f"{probe['peak_mib']:.1f}", f"{ratio:.2f}"]
        )
    text = table(["", "time (s)", "peak RSS growth (MiB)", "time ÷ loop"], rows)
    masks = scoring.get("masks")
    channel = [
        *(channel_rows(scoring["channel"], "benchmark ResNet") if "channel" in scoring else []),
        *(channel_rows(masks["channel"], "ResNet-34 + 3 ASPP") if masks and "channel" in masks
          else []),
    ]  # fmt: skip
    if channel:
        text += "\n\n" + table(CHANNEL_HEADER, channel)
    if masks:
        text += "\n\n" + table(
            [
                "ResNet-34 layout + 3 ASPP heads",
                "params",
                "score_tasks (s)",
                "cut_masks (s)",
                "ratio",
            ],
            [
                [
                    "calibrated vote",
                    f"{masks['params']:,}",
                    f"{masks['score_tasks_seconds']:.2f}",
                    f"{masks['cut_masks_seconds']:.2f}",
                    f"{masks['time_ratio']:.2f}",
                ]
            ],
        )
    return text


def scoring_summaries(scoring: dict[str, Any]) -> list[str]:
    """The time (and memory) ratio of ``score_tasks`` to the plain loop; cut_masks to scoring."""
    memory = scoring.get("memory_ratio")
    lines = [
        f"score_tasks vs plain loop: time ×{scoring['time_ratio']:.2f}"
        + (f", peak memory ×{memory:.2f}" if memory else "")
    ]
    if scoring.get("masks"):
        lines.append(f"cut_masks vs score_tasks: time ×{scoring['masks']['time_ratio']:.2f}")
    for where, part in (("ResNet", scoring), ("ASPP", scoring.get("masks") or {})):
        if "channel" in part:
            lines.append(
                f"channel criterion vs plain loop ({where}): time ×{part['channel']['time_ratio']:.2f}"
            )
    return lines


def scoring_headline(scoring: dict[str, Any]) -> list[dict[str, Any]]:
    """``scoring.time_ratio``, ``scoring.memory_ratio`` and ``masks.time_ratio`` (BENCHMARKS.md)."""
    config = scoring["config"]
    setting = {
        "model": config["model"],
        "model_kwargs": config["model_kwargs"],
        "data": config["data"],
        "tasks": scoring["tasks"],
        "batches": config["batches"],
        "batch_size": config["batch_size"],
        "threads": config["threads"],
        "baseline": "1 forward + T autograd.grad over all parameters",
    }
    entries = [
        {
            "id": "scoring.time_ratio",
            "setting": setting,
            "value": scoring["time_ratio"],
            "unit": "× plain loop time",
            "goal": "<= 0.6",
        }
    ]
    if scoring.get("memory_ratio") is not None:
        entries.append(
            {
                "id": "scoring.memory_ratio",
                "setting": setting,
                "value": scoring["memory_ratio"],
                "unit": "× plain loop peak RSS growth",
                "goal": "<= 1.3",
            }
        )
    if "channel" in scoring:
        entries.append(channel_headline(scoring["channel"], {**setting, "baseline": None}))
    masks = scoring.get("masks")
    if masks:
        entries.append(
            {
                "id": "masks.time_ratio",
                "setting": {
                    "model": "resnet34-layout + 3 ASPP heads",
                    "width": config["masks_width"],
                    "blocks": list(config["masks_blocks"]),
                    "head_width": config["masks_head_width"],
                    "params": masks["params"],
                    "input_size": config["masks_input_size"],
                    "batches": config["masks_batches"],
                    "batch_size": config["masks_batch_size"],
                    "pruning_ratio": config["masks_ratio"],
                    "cut_masks_calls": config.get("masks_calls", 1),
                    "rule": "vote (calibrated)",
                    "threads": config["threads"],
                },
                "value": masks["time_ratio"],
                "unit": "× score_tasks time",
                "goal": "<= 0.25",
            }
        )
    if masks and "channel" in masks:
        aspp = {"model": "resnet34-layout + 3 ASPP heads", "width": config["masks_width"],
                "blocks": list(config["masks_blocks"]), "head_width": config["masks_head_width"],
                "params": masks["params"], "input_size": config["masks_input_size"],
                "batch_size": config["masks_batch_size"], "tasks": masks["tasks"],
                "threads": config["threads"]}  # fmt: skip
        entries.append(channel_headline(masks["channel"], aspp))
    return entries


PART = Part(
    name="scoring",
    title="Time and memory of `score_tasks` and `cut_masks`",
    config=ScoringConfig,
    run=run_scoring_speed,
    render=render_scoring,
    summary=scoring_summaries,
    needs=lambda config: data_needs(config.data),
    headline=scoring_headline,
)
