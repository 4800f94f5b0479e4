"""The benchmark suites: which parts run with which settings. ``quick`` is ``make demo``.

The suites are data (``suites.json``: ``{suite: {"description", "parts": {part:
settings}}}``); each part's settings become its config (:meth:`Part.configure`)
and are validated before anything runs.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.measure import environment, git_sha
from benchmarks.parts import PART_ALIASES, PARTS

__all__ = ["DEVICES", "SUITES", "SUITES_FILE", "Suite", "load_suites", "run_suite"]

SUITES_FILE = Path(__file__).with_name("suites.json")
DEVICES: tuple[str, ...] = ("cpu", "cuda")


@dataclass(frozen=True)
class Suite:
    """Named parts and their settings (as data); ``description`` for ``list``."""

    description: str
    parts: Mapping[str, Mapping[str, Any]]

    def configs(self) -> dict[str, Any]:
        """``{part: config}``, every setting validated by the part's config."""
        return {name: PARTS[name].configure(settings) for name, settings in self.parts.items()}


def load_suites(path: str | Path = SUITES_FILE) -> dict[str, Suite]:
    """The suites of a JSON file ``{suite: {"description": str, "parts": {part: settings}}}``."""
    raw = json.loads(Path(path).read_text())
    suites = {}
    for name, entry in raw.items():
        unknown = [p for p in entry["parts"] if p not in PARTS]
        if unknown:
            raise ValueError(
                f"suite {name!r} in {path} names unknown part(s) {unknown}; parts are {list(PARTS)}"
            )
        suites[name] = Suite(entry["description"], dict(entry["parts"]))
    return suites


SUITES: dict[str, Suite] = load_suites()


def _chosen_parts(name: str, suite: Suite, parts: list[str] | None) -> list[str]:
    chosen = []
    for part in list(suite.parts) if parts is None else parts:
        if part in PART_ALIASES:
            warnings.warn(
                f"part {part!r} is now called {PART_ALIASES[part]!r}",
                DeprecationWarning,
                stacklevel=3,
            )
            part = PART_ALIASES[part]
        chosen.append(part)
    unknown = [p for p in chosen if p not in suite.parts]
    if unknown:
        raise ValueError(
            f"suite {name!r} has no part(s) {unknown}; its parts are {list(suite.parts)}"
        )
    return chosen


def run_suite(
    name: str,
    *,
    seed: int = 0,
    progress: bool = True,
    parts: list[str] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Run suite ``name``; return ``{"run_info", "metrics", "meta_info"}``.

    ``device``: only ``"cpu"`` today (the protocol's latencies are CPU latencies);
    ``"cuda"`` is refused with an error rather than silently measured on the CPU.
    """
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose from {sorted(SUITES)}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {list(DEVICES)}, got {device!r}")
    if device != "cpu":
        raise ValueError(
            f"device {device!r}: the benchmark parts run on the CPU only for now; use --device cpu"
        )
    suite = SUITES[name]
    chosen = _chosen_parts(name, suite, parts)
    configs = suite.configs()  # every part's settings checked before the first one runs
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    metrics: dict[str, Any] = {}
    part_seconds: dict[str, float] = {}
    for part in chosen:
        t0 = time.perf_counter()
        metrics[part] = PARTS[part].run(configs[part], seed=seed, progress=progress)
        part_seconds[part] = time.perf_counter() - t0
    return {
        "run_info": {
            "suite": name,
            "parts": chosen,
            "seed": seed,
            "device": device,
            "git_sha": git_sha(),
            "started": started,
            "seconds": time.perf_counter() - start,
            "part_seconds": part_seconds,
        },
        "metrics": metrics,
        "meta_info": environment(),
    }
