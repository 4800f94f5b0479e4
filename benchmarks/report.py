"""results.json → report.md (the papers' table shapes), PNG plots and the README's results section.

Every file is replaced atomically (written to a temporary file in the same
folder, then ``os.replace``), so a run killed while writing leaves the previous
complete file, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.parts import PART_ALIASES, PARTS

__all__ = [
    "headline_entries",
    "markers",
    "render_report",
    "run_status",
    "summarise",
    "update_readme",
    "write_atomic",
    "write_plots",
    "write_results",
]


def _metrics(results: dict[str, Any]) -> dict[str, Any]:
    """``results["metrics"]`` with old part names read as their current ones."""
    metrics = dict(results["metrics"])
    for old, new in PART_ALIASES.items():
        if old in metrics and new not in metrics:
            metrics[new] = metrics.pop(old)
    return metrics


def summarise(results: dict[str, Any]) -> list[str]:
    """One line per table: its best method and by how much (measured, from ``results``)."""
    metrics = _metrics(results)
    return [
        line for key, part in PARTS.items() if key in metrics for line in part.summary(metrics[key])
    ]


def headline_entries(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every part's headline claims, from its metrics (BENCHMARKS.md), in the parts' order.

    A part whose claims cannot be read from its metrics gets one entry
    ``{"id": "<part>.headline_failed", "error": ...}`` instead (never silently none).
    """
    metrics = _metrics(results)
    entries: list[dict[str, Any]] = []
    for key, part in PARTS.items():
        if key not in metrics:
            continue
        try:
            entries += part.headline(metrics[key])
        except Exception as error:  # a malformed or old metrics block: say so, keep the rest
            entries.append(
                {"id": f"{key}.headline_failed", "error": f"{type(error).__name__}: {error}"}
            )
    return entries


def render_report(results: dict[str, Any]) -> str:
    """The whole report.md."""
    info = results["run_info"]
    parts = [
        f"# cut-pam benchmark report — suite `{info['suite']}`",
        f"seed {info['seed']}, commit `{info['git_sha']}`, {info['seconds']:.0f} s on "
        f"{results['meta_info'].get('cpu_count')} CPUs, torch {results['meta_info'].get('torch')}",
        "## Summary\n\n" + "\n".join(f"- {line}" for line in summarise(results)),
    ]
    status = run_status(info)
    if status:
        parts.insert(2, "\n".join(f"- {line}" for line in status))
    metrics = _metrics(results)
    for key, part in PARTS.items():
        if key in metrics:
            parts.append(f"## {part.title}\n\n{part.render(metrics[key])}")
    parts.append(
        "Accuracy cells: after fine-tuning (before fine-tuning). Latency: median of repeats on one CPU thread. Speed-up / MAC reduction: how much of "
        "the MAC reduction the compact model turns into CPU latency at batch 64."
    )
    return "\n\n".join(parts) + "\n"


def run_status(info: dict[str, Any]) -> list[str]:
    """Lines on an unfinished, resumed, failed or partly skipped run (none for a plain one)."""
    lines = []
    if info.get("status") == "partial":
        counts = ", ".join(
            f"`{p}` {c['stored']} of {c['of']} cells"
            for p, c in info.get("partial_parts", {}).items()
        )
        lines.append(
            f"**Partial report of an unfinished run**: {counts or 'no stored cells'}. Each table "
            "holds only the stored cells; a best other method is the best of those present."
        )
    elif info.get("status") == "running":
        lines.append(f"**Unfinished run**: parts so far {info.get('finished_parts', [])}.")
    elif info.get("status") == "interrupted":
        lines.append(f"**Interrupted** during part `{info.get('interrupted_part')}`.")
    if info.get("kept_parts"):
        lines.append(f"Resumed: kept {info['kept_parts']} from the earlier run.")
    for part, failure in info.get("failed_parts", {}).items():
        lines.append(f"**Failed** `{part}`: {failure['error']}")
    for part, missing in info.get("skipped_parts", {}).items():
        lines.append(f"Skipped `{part}`: missing {'; '.join(missing)}")
    return lines


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one step (a temporary file in its folder, then ``os.replace``)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_plots(results: dict[str, Any], out: Path) -> list[str]:
    """PNG plots; returns the file names written.

    Drawn into a temporary folder inside ``out``, then each moved in with ``os.replace``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = _metrics(results)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".plots-"))
    try:
        names = [
            name for key, part in PARTS.items() if key in metrics
            for name in part.plots(metrics[key], staging, plt)
        ]  # fmt: skip
        for name in names:
            os.replace(staging / name, out / name)
    finally:
        plt.close("all")
        shutil.rmtree(staging, ignore_errors=True)
    return names


def write_results(results: dict[str, Any], out: Path, *, plots: bool = True) -> None:
    """results.json, report.md and (unless ``plots=False``) the plots into ``out``, each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    results["headline"] = headline_entries(results)
    write_atomic(out / "results.json", json.dumps(results, indent=2, default=str))
    drawn = write_plots(results, out) if plots else []
    report = render_report(results)
    if drawn:
        report += "\n" + "\n".join(f"![{p}]({p})" for p in drawn) + "\n"
    write_atomic(out / "report.md", report)


START, END = "<!-- results:start -->", "<!-- results:end -->"


def markers(name: str = "results") -> tuple[str, str]:
    """The README's start and end markers of generated section ``name`` (``results``: the default)."""
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
        raise ValueError(f"section name must be lower-case letters, digits, - or _, got {name!r}")
    return (START, END) if name == "results" else (f"<!-- {name}:start -->", f"<!-- {name}:end -->")


def update_readme(
    results_path: str | os.PathLike[str],
    readme: str | os.PathLike[str] = "README.md",
    *,
    section: str = "results",
) -> None:
    """Replace the README's generated ``section`` by the report of ``results_path`` (never typed by hand).

    ``section`` names the marker pair ``<!-- NAME:start -->`` … ``<!-- NAME:end -->``
    (``results`` is ``<!-- results:start -->``), so several runs can each fill their own.
    """
    start, end = markers(section)
    results = json.loads(Path(results_path).read_text())
    text = Path(readme).read_text()
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no {start} ... {end} section to replace")
    body = render_report(results).split("\n", 2)[2]  # drop the report's title line
    # One heading level down: the section sits under the README's "## Results".
    body = "\n".join("#" + line if line.startswith("#") else line for line in body.split("\n"))
    option = "" if section == "results" else f" --section {section}"
    command = f"python -m benchmarks readme {os.fspath(results_path)}{option}"
    block = f"{start}\n<!-- generated by `{command}`; do not edit by hand -->\n\n{body}\n{end}"
    Path(readme).write_text(
        re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    )
