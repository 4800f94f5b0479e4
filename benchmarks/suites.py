"""The benchmark suites: which tables run with which sizes. ``quick`` is ``make demo``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from benchmarks.cut_suite import CUTSuiteConfig, run_cut_suite
from benchmarks.edge_latency import EdgeConfig, render_edge, run_edge_latency
from benchmarks.measure import environment, git_sha
from benchmarks.pam_render import pam_summaries, plot_pam, render_pam
from benchmarks.pam_suite import FULL_PAM, QUICK_PAM, run_pam_suite
from benchmarks.report import PLOTS, register_section
from benchmarks.scoring_speed import (
    ScoringConfig,
    render_memory,
    run_scoring_memory,
    run_scoring_speed,
)
from benchmarks.speedup import render_speedup, run_speedup, speedup_summaries

__all__ = ["SUITES", "Suite", "run_suite"]


@dataclass(frozen=True)
class Suite:
    """Named parts, each ``(seed, progress) -> metrics``; ``description`` for ``list``."""

    description: str
    parts: dict[str, Callable[[int, bool], Any]] = field(default_factory=dict)


QUICK_CUT = CUTSuiteConfig(
    methods=(
        "cut",
        "disparse",
        "tp-magnitude",
        "tp-taylor",
        "nni-l1",
        "cut-weight",
        "disparse-weight",
        "magnitude-weight",
    ),
)
FULL_CUT = CUTSuiteConfig(
    subsets=(("digit", "parity"), ("parity", "ge5"), ("digit", "parity", "mod3")),
    ratios=(0.3, 0.5, 0.7, 0.9),
    methods=(
        "cut", "disparse", "tp-magnitude", "tp-taylor", "nni-l1", "scratch", "cut-weight", "disparse-weight",
        "magnitude-weight", "snip-init-weight", "random-init-weight",
    ),
    pretrain_epochs=10,
    score_batches=50,
    finetune_steps=300,
)  # fmt: skip

QUICK_EDGE = EdgeConfig(
    models={"resnet18": {"width": 16, "blocks": [1, 1, 1, 1]}}, repeats=10, rounds=2
)

SUITES: dict[str, Suite] = {
    "quick": Suite(
        "CUT on MNIST-5k multi-head (digit+parity, 50 %, 8 methods); score_tasks overhead; latency vs MACs by width; PAM vs MTZ vs no merging (2 tasks); edge latency",
        {
            "cut": lambda seed, progress: run_cut_suite(QUICK_CUT, seed=seed, progress=progress),
            "scoring": lambda seed, progress: run_scoring_speed(
                ScoringConfig(), seed=seed, progress=progress
            ),
            "speedup": lambda seed, progress: run_speedup(seed=seed),
            "pam": lambda seed, progress: run_pam_suite(QUICK_PAM, seed=seed, progress=progress),
            "edge": lambda seed, progress: run_edge_latency(
                QUICK_EDGE, seed=seed, progress=progress
            ),
        },
    ),
    "full": Suite(
        "CUT: 3 task subsets x ratios 0.3/0.5/0.7/0.9 x 11 methods; score_tasks time and memory; latency vs MACs by width; PAM 2 and 5 tasks x 2 pruners x paper/subsets grouping; edge latency",
        {
            "cut": lambda seed, progress: run_cut_suite(FULL_CUT, seed=seed, progress=progress),
            "scoring": lambda seed, progress: run_scoring_speed(
                ScoringConfig(batches=30), seed=seed, progress=progress
            ),
            "speedup": lambda seed, progress: run_speedup(widths=(16, 32, 64, 128), seed=seed),
            "pam": lambda seed, progress: run_pam_suite(FULL_PAM, seed=seed, progress=progress),
            "scoring_memory": lambda seed, progress: run_scoring_memory(seed=seed),
            "edge": lambda seed, progress: run_edge_latency(
                EdgeConfig(), seed=seed, progress=progress
            ),
        },
    ),
}


register_section(
    "pam",
    "PAM: merge single-task networks, then prune (every task combination)",
    render_pam,
    pam_summaries,
)
PLOTS.append(plot_pam)
register_section(
    "speedup", "Latency speed-up against MAC reduction, by width", render_speedup, speedup_summaries
)
register_section(
    "edge", "Edge: dense vs compact in PyTorch and onnxruntime (one CPU thread)", render_edge
)
register_section(
    "scoring_memory",
    "Peak memory of `score_tasks`: grows with the model, not the data",
    render_memory,
)


def run_suite(
    name: str, *, seed: int = 0, progress: bool = True, parts: list[str] | None = None
) -> dict[str, Any]:
    """Run suite ``name``; return ``{"run_info", "metrics", "meta_info"}``."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose from {sorted(SUITES)}")
    suite = SUITES[name]
    chosen = list(suite.parts) if parts is None else parts
    unknown = [p for p in chosen if p not in suite.parts]
    if unknown:
        raise ValueError(
            f"suite {name!r} has no part(s) {unknown}; its parts are {list(suite.parts)}"
        )
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    metrics: dict[str, Any] = {}
    part_seconds: dict[str, float] = {}
    for part in chosen:
        t0 = time.perf_counter()
        metrics[part] = suite.parts[part](seed, progress)
        part_seconds[part] = time.perf_counter() - t0
    return {
        "run_info": {
            "suite": name,
            "parts": chosen,
            "seed": seed,
            "git_sha": git_sha(),
            "started": started,
            "seconds": time.perf_counter() - start,
            "part_seconds": part_seconds,
        },
        "metrics": metrics,
        "meta_info": environment(),
    }
