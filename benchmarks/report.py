"""results.json → report.md (the papers' table shapes), PNG plots and the README's results section."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["render_report", "summarise", "update_readme", "write_plots", "write_results"]


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _num(value: float, unit: str = "") -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}{unit}"
    return f"{value:.0f}{unit}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def cut_tables(cut: dict[str, Any]) -> str:
    """One table per (task subset, ratio): methods as rows."""
    out = []
    rows = cut["rows"]
    dense = {tuple(r["tasks"]): r for r in rows if r["method"] == "dense"}
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["method"] != "dense":
            groups.setdefault((tuple(row["tasks"]), row["ratio"]), []).append(row)
    for (tasks, ratio), group in groups.items():
        base = dense.get(tasks)
        header = ["method", "granularity"]
        header += [f"{t} acc (before FT)" for t in tasks]
        header += [
            "params",
            "MACs",
            "lat b1 (ms)",
            "lat b64 (ms)",
            "speed-up b64 / MAC red.",
            "run time (s)",
        ]
        body = []
        for row in ([base] if base else []) + group:
            efficiency = "–"
            if base and row is not base and row["granularity"] == "channel":
                speedup = base["latency_b64_ms"] / row["latency_b64_ms"]
                reduction = base["macs"] / row["macs"]
                efficiency = f"{speedup:.2f}× / {reduction:.2f}× = {speedup / reduction:.2f}"
            cells = [row["method"], row["granularity"]]
            cells += [
                f"{_pct(row['accuracy'][t])} ({_pct(row['accuracy_before_finetune'][t])})"
                for t in tasks
            ]
            cells += [
                _num(row["params"]), _num(row["macs"]), f"{row['latency_b1_ms']:.2f}",
                f"{row['latency_b64_ms']:.2f}", efficiency, f"{row['method_seconds']:.1f}",
            ]  # fmt: skip
            body.append(cells)
        out.append(
            f"#### Tasks {' + '.join(tasks)}, pruning ratio {ratio}\n\n" + _table(header, body)
        )
    return "\n\n".join(out)


def scoring_table(scoring: dict[str, Any]) -> str:
    s, p = scoring["score_tasks"], scoring["plain_loop"]
    memory = scoring.get("memory_ratio")
    return _table(
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


SECTIONS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "cut": ("CUT: prune a pre-trained multi-task model for a subset of tasks", cut_tables),
    "scoring": ("Overhead of `score_tasks`", scoring_table),
}
"""metrics key → (title, renderer). Other suites add theirs with :func:`register_section`."""


SUMMARIES: dict[str, Callable[[Any], list[str]]] = {}
"""metrics key → ``(metrics[key]) -> summary lines`` (best method of each table and by how much)."""


def register_section(
    key: str,
    title: str,
    render: Callable[[Any], str],
    summary: Callable[[Any], list[str]] | None = None,
) -> None:
    """Add a renderer (and optionally summary lines) for ``metrics[key]``."""
    SECTIONS[key] = (title, render)
    if summary is not None:
        SUMMARIES[key] = summary


def summarise(results: dict[str, Any]) -> list[str]:
    """One line per table: its best method and by how much (measured, from ``results``)."""
    lines = []
    cut = results["metrics"].get("cut")
    if cut:
        groups: dict[tuple, list[dict]] = {}
        for row in cut["rows"]:
            if row["method"] != "dense":
                groups.setdefault((tuple(row["tasks"]), row["ratio"]), []).append(row)
        for (tasks, ratio), rows in groups.items():

            def mean_acc(r: dict) -> float:
                return sum(r["accuracy"].values()) / len(r["accuracy"])

            ranked = sorted(rows, key=mean_acc, reverse=True)
            best, second = ranked[0], ranked[1] if len(ranked) > 1 else None
            gap = (
                f", {100 * (mean_acc(best) - mean_acc(second)):+.2f} points over {second['method']}"
                if second
                else ""
            )
            lines.append(
                f"CUT table ({'+'.join(tasks)}, ratio {ratio}): best mean accuracy {100 * mean_acc(best):.2f}% "
                f"by {best['method']}{gap}"
            )
    scoring = results["metrics"].get("scoring")
    if scoring:
        lines.append(
            f"score_tasks vs plain loop: time ×{scoring['time_ratio']:.2f}"
            + (
                f", peak memory ×{scoring['memory_ratio']:.2f}"
                if scoring.get("memory_ratio")
                else ""
            )
        )
    for key, summary in SUMMARIES.items():
        if key in results["metrics"]:
            lines.extend(summary(results["metrics"][key]))
    return lines


def render_report(results: dict[str, Any]) -> str:
    """The whole report.md."""
    info = results["run_info"]
    parts = [
        f"# cut-pam benchmark report — suite `{info['suite']}`",
        f"seed {info['seed']}, commit `{info['git_sha']}`, {info['seconds']:.0f} s on "
        f"{results['meta_info'].get('cpu_count')} CPUs, torch {results['meta_info'].get('torch')}",
        "## Summary\n\n" + "\n".join(f"- {line}" for line in summarise(results)),
    ]
    for key, (title, render) in SECTIONS.items():
        if key in results["metrics"]:
            parts.append(f"## {title}\n\n{render(results['metrics'][key])}")
    parts.append(
        "Accuracy cells: after fine-tuning (before fine-tuning). Latency: median of repeats on one CPU thread. Speed-up / MAC reduction: how much of "
        "the MAC reduction the compact model turns into CPU latency at batch 64."
    )
    return "\n\n".join(parts) + "\n"


def write_plots(results: dict[str, Any], out: Path) -> list[str]:
    """PNG plots; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    cut = results["metrics"].get("cut")
    if cut:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        methods = sorted({r["method"] for r in cut["rows"]})
        for method in methods:
            rows = [r for r in cut["rows"] if r["method"] == method]
            macs = [r["macs"] / 1e6 for r in rows]
            acc = [100 * sum(r["accuracy"].values()) / len(r["accuracy"]) for r in rows]
            left.scatter(macs, acc, label=method)
            right.scatter(macs, [r["latency_b64_ms"] for r in rows], label=method)
        left.set(
            xlabel="MACs (M)",
            ylabel="mean accuracy of the selected tasks (%)",
            title="Accuracy vs MACs",
        )
        right.set(xlabel="MACs (M)", ylabel="latency at batch 64 (ms)", title="CPU latency vs MACs")
        left.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "cut_accuracy_latency_vs_macs.png", dpi=120)
        plt.close(fig)
        written.append("cut_accuracy_latency_vs_macs.png")
    for plot in PLOTS:
        written += plot(results, out, plt)
    return written


PLOTS: list[Callable[[dict[str, Any], Path, Any], list[str]]] = []
"""Extra plot writers ``(results, out_dir, pyplot) -> [file names]`` registered by other suites."""


def write_results(results: dict[str, Any], out: Path) -> None:
    """results.json, report.md and the plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    plots = write_plots(results, out)
    report = render_report(results)
    if plots:
        report += "\n" + "\n".join(f"![{p}]({p})" for p in plots) + "\n"
    (out / "report.md").write_text(report)


START, END = "<!-- results:start -->", "<!-- results:end -->"


def update_readme(
    results_path: str | os.PathLike[str], readme: str | os.PathLike[str] = "README.md"
) -> None:
    """Replace the README's results section with the report of ``results_path`` (never typed by hand)."""
    results = json.loads(Path(results_path).read_text())
    text = Path(readme).read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme} has no {START} ... {END} section to replace")
    body = render_report(results).split("\n", 2)[2]  # drop the report's title line
    # One heading level down: the section sits under the README's "## Results".
    body = "\n".join("#" + line if line.startswith("#") else line for line in body.split("\n"))
    command = f"python -m benchmarks readme {os.fspath(results_path)}"
    section = f"{START}\n<!-- generated by `{command}`; do not edit by hand -->\n\n{body}\n{END}"
    Path(readme).write_text(
        re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S)
    )
