"""The benchmark suites: which parts run with which settings. ``quick`` is ``make demo``.

The suites are data (``suites.json``: ``{suite: {"description", "parts": {part:
settings}}}``); each part's settings become its config (:meth:`Part.configure`)
and are validated before anything runs.

A run with an output folder loses nothing: what each selected part needs is
checked first (:mod:`benchmarks.needs`); results.json and report.md are
rewritten atomically after every part; a part that raises is recorded in
``run_info.failed_parts`` and the others still run; ``resume=True`` keeps the
parts the folder's results.json finished with the same version
(:mod:`benchmarks.resume`) and runs the rest.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.cells import Cells
from benchmarks.devices import DEVICES, check_device, device_kind
from benchmarks.measure import environment, git_sha
from benchmarks.needs import PLOTS, MissingNeeds, Need, missing_needs, module_need
from benchmarks.parts import PART_ALIASES, PARTS
from benchmarks.report import headline_entries, write_results
from benchmarks.resume import code_version, kept_parts, part_version

__all__ = [
    "DEVICES",
    "SUITES",
    "SUITES_FILE",
    "Suite",
    "load_suites",
    "partial_run",
    "previous_run",
    "run_suite",
    "suite_needs",
]
TRACEBACK_LINES = 30
"""How many of a failed part's last traceback lines results.json keeps."""

SUITES_FILE = Path(__file__).with_name("suites.json")


@dataclass(frozen=True)
class Suite:
    """Named parts and their settings (as data); ``description`` for ``list``."""

    description: str
    parts: Mapping[str, Mapping[str, Any]]

    def configs(self, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """``{part: config}``, every setting validated by the part's config.

        ``overrides``: ``{part: settings}`` replacing the suite's settings of that part key by key.
        """
        extra = dict(overrides or {})
        unknown = [p for p in extra if p not in self.parts]
        if unknown:
            raise ValueError(f"overrides name part(s) {unknown} that the suite does not have")
        return {
            name: PARTS[name].configure({**settings, **extra.get(name, {})})
            for name, settings in self.parts.items()
        }


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


def suite_needs(
    configs: Mapping[str, Any], *, device: str = "cpu", plots: bool = True
) -> dict[str, list[Need]]:
    """``{part: needs}`` of the selected parts' configs, plus :data:`PLOTS` (matplotlib) if ``plots``."""
    needs = {part: list(PARTS[part].needs(config)) for part, config in configs.items()}
    for part in needs:
        if PARTS[part].device_for(device) != "cpu":
            needs[part].append(Need("cuda", "cuda", f"--device {device} for {part}"))
    if plots:
        needs[PLOTS] = [module_need("matplotlib", "the report's plots")]
    return needs


def previous_run(out: str | Path) -> dict[str, Any]:
    """The results.json of an earlier run in ``out`` (what ``--resume`` continues)."""
    path = Path(out) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"nothing to resume in {out}: {path} does not exist; run without --resume"
        )
    return json.loads(path.read_text())


def _failure(error: Exception) -> dict[str, str]:
    lines = "".join(traceback.format_exception(error)).splitlines()
    return {
        "error": f"{type(error).__name__}: {error}",
        "traceback": "\n".join(lines[-TRACEBACK_LINES:]),
    }


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, file=sys.stderr, flush=True)


def _cells(
    part: str, version: Mapping[str, Any], out: str | Path | None, resume: bool, jobs: int
) -> Cells:
    """Where ``part`` stores its cells (versioned by the part's code and device); a run that does
    not resume starts them afresh."""
    folder = None if out is None else Path(out) / "cells" / part
    cells = Cells(folder, {"code": version["code"], "device": version["device"]}, jobs=jobs)
    if not resume:
        cells.clear()
    return cells


def run_suite(
    name: str,
    *,
    seed: int = 0,
    progress: bool = True,
    parts: list[str] | None = None,
    device: str = "cpu",
    out: str | Path | None = None,
    resume: bool = False,
    skip_missing: bool = False,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Run suite ``name``; return ``{"run_info", "metrics", "meta_info", "headline"}``.

    With ``out``, results.json and report.md (and plots) are written there after
    every part. ``resume``: keep what ``out/results.json`` finished with the
    same version. ``skip_missing``: parts lacking a package or data root are
    skipped (``run_info.skipped_parts``) instead of stopping with
    :class:`~benchmarks.needs.MissingNeeds` before anything runs. A part that
    raises goes into ``run_info.failed_parts``; the others still run. On
    ``KeyboardInterrupt`` the finished parts are written (``status:
    "interrupted"``) and the interrupt goes on.

    ``overrides``: ``{part: settings}`` replacing the suite's settings key by key
    (e.g. the dense part's data, from ``--data nyuv2 --data-root DIR``); they are
    part of each part's version, so ``resume`` reruns a part whose settings changed.

    ``device``: ``"cpu"`` or ``"cuda"`` (``"cuda:N"``). The parts that list it in
    ``Part.devices`` (dense, cut, pam) train, prune and evaluate there; the CPU
    measurements (latency, edge, memory) stay on the CPU, and their latencies are
    CPU latencies everywhere. ``run_info.part_devices`` records where each ran. A
    missing CUDA device is a missing need (``skip_missing`` skips those parts).

    Cells (:mod:`benchmarks.cells`): the parts with ``Part.cells`` (dense, pam)
    store every finished cell in ``out/cells/<part>``, so ``resume`` computes only
    the cells an interrupted or failed part had not finished (a run without
    ``resume`` starts them afresh); ``jobs`` worker processes compute them.
    """
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose from {sorted(SUITES)}")
    device_kind(device)
    jobs = Cells(jobs=jobs).jobs  # checked before anything runs
    if resume and out is None:
        raise ValueError("resume=True needs the output folder of the run to continue (out=...)")
    suite = SUITES[name]
    chosen = _chosen_parts(name, suite, parts)
    every = suite.configs(overrides)  # every part's settings checked before the first one runs
    configs = {part: every[part] for part in chosen}
    devices = {p: PARTS[p].device_for(device) for p in chosen}
    versions = {p: part_version(configs[p], seed=seed, device=devices[p]) for p in chosen}
    kept, rerun = kept_parts(previous_run(out), versions) if resume else ({}, {})
    to_run = {p: configs[p] for p in chosen if p not in kept}  # kept parts need nothing now
    missing = missing_needs(suite_needs(to_run, device=device, plots=out is not None))
    if missing and not skip_missing:
        raise MissingNeeds(missing)
    plots = PLOTS not in missing
    skipped = {p: [n.describe() for n in lacking] for p, lacking in missing.items() if p != PLOTS}
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    info: dict[str, Any] = {
        "suite": name,
        "parts": chosen,
        "seed": seed,
        "device": device,
        "part_devices": devices,
        "git_sha": git_sha(),
        "code_version": code_version(),
        "started": started,
        "status": "running",
        "seconds": 0.0,
        "part_seconds": {p: kept[p]["seconds"] for p in kept},
        "part_versions": {p: versions[p] for p in kept},
        "failed_parts": {},
        "overrides": {p: dict(v) for p, v in (overrides or {}).items()},
        "skipped_parts": skipped,
        "kept_parts": list(kept),
        "jobs": jobs,
    }
    if resume:
        info["rerun_parts"] = {p: why for p, why in rerun.items() if p not in skipped}
    if not plots:
        info["plots_skipped"] = [n.describe() for n in missing[PLOTS]]
    results = {
        "run_info": info,
        "metrics": {p: kept[p]["metrics"] for p in kept},
        "meta_info": environment(),
        "headline": [],  # filled from each part's metrics by Part.headline (BENCHMARKS.md)
    }

    def save() -> None:
        info["seconds"] = time.perf_counter() - start
        for key in (
            "part_seconds",
            "part_versions",
        ):  # in the suite's order, as an uninterrupted run
            info[key] = {p: info[key][p] for p in chosen if p in info[key]}
        results["metrics"] = {p: results["metrics"][p] for p in chosen if p in results["metrics"]}
        results["headline"] = headline_entries(results)
        if out is not None:
            write_results(results, Path(out), plots=plots)

    save()
    for index, part in enumerate(chosen, 1):
        where = f"[{index}/{len(chosen)}] {part}"
        if part in kept or part in skipped:
            why = "kept from the earlier run" if part in kept else "skipped: missing "
            _say(progress, f"{where}: {why}{'; '.join(skipped.get(part, []))}")
            continue
        _say(
            progress,
            f"{where}: {PARTS[part].title}" + (f" ({rerun[part]})" if part in rerun else ""),
        )
        t0 = time.perf_counter()
        try:
            where_to: dict[str, Any] = (
                {} if devices[part] == "cpu" else {"device": str(check_device(devices[part]))}
            )
            if PARTS[part].cells:
                where_to["cells"] = _cells(part, versions[part], out, resume, jobs)
            metrics = PARTS[part].run(configs[part], seed=seed, progress=progress, **where_to)
        except KeyboardInterrupt:
            info.update(status="interrupted", interrupted_part=part)
            save()
            raise
        except Exception as error:  # recorded; the other parts still run
            info["failed_parts"][part] = _failure(error)
            _say(progress, f"{where}: FAILED: {info['failed_parts'][part]['error']}")
        else:
            results["metrics"][part] = metrics
            info["part_versions"][part] = versions[part]
        info["part_seconds"][part] = time.perf_counter() - t0
        save()
    info["status"] = "finished"
    save()
    return results


def partial_run(run: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """The run in folder ``run`` so far: its finished parts, and each unfinished part from its stored cells.

    For a long run still going (or stopped): the parts with cells (dense, pam) are
    assembled from the cells stored so far, read with the run's code version and
    device as recorded in its results.json, nothing else computed (the dense part
    evaluates the dense models of the seeds it has rows of). Written to ``out``
    (default ``run/partial``) as results.json, report.md and plots, with
    ``run_info.status`` ``"partial"`` and ``run_info.partial_parts`` ``{part:
    {"stored", "of"}}``; a part with no stored cell is left out. The tables hold
    only the stored cells: a "best other method" is the best of the methods present.
    """
    previous = previous_run(run)
    info = dict(previous["run_info"])
    configs = SUITES[info["suite"]].configs(info.get("overrides"))
    metrics = dict(previous.get("metrics", {}))
    partial: dict[str, dict[str, int]] = {}
    for part in info["parts"]:
        if part in metrics or not PARTS[part].cells:
            continue
        device = info.get("part_devices", {}).get(part, "cpu")
        folder = Path(run) / "cells" / part
        cells = Cells(folder, {"code": info["code_version"], "device": device}, compute=False)
        found = PARTS[part].run(configs[part], seed=info["seed"], progress=False, cells=cells)
        if found["cells"]["stored"]:
            metrics[part] = found
            partial[part] = found["cells"]
    info.update(status="partial", partial_parts=partial)
    results = {
        "run_info": info,
        "metrics": {p: metrics[p] for p in info["parts"] if p in metrics},
        "meta_info": previous.get("meta_info", {}),
        "headline": [],
    }
    plots = not missing_needs({PLOTS: [module_need("matplotlib", "the report's plots")]})
    write_results(results, Path(out) if out is not None else Path(run) / "partial", plots=plots)
    return results
