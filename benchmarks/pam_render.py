"""The PAM table in the paper's shape, its one-line summaries and a MACs bar chart.

``metrics`` is what :func:`benchmarks.pam_suite.run_pam_suite` returns; every
number printed here is read from it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["METHOD_LABELS", "pam_summaries", "plot_pam", "render_pam"]

METHOD_LABELS: dict[str, str] = {
    "no-merge": "no merging",
    "mtz": "MTZ",
    "pam-paper": "PAM (paper)",
    "pam-subsets": "PAM (subsets)",
}
PAPER_RATIOS = "the paper: up to 4.87× vs no merging, 2.01× vs MTZ"


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _short(task: str) -> str:
    return task.removeprefix("classes_")


def _combination(tasks: Iterable[str]) -> str:
    return " + ".join(_short(t) for t in tasks)


def _macs(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _tables(metrics: dict[str, Any]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """``(summary entry, its rows)`` per split × pruner, in run order."""
    return [
        (entry, [r for r in metrics["rows"]
                 if r["split"] == entry["split"] and r["pruner"] == entry["pruner"]])
        for entry in metrics["summary"]
    ]  # fmt: skip


def _runs(metrics: dict[str, Any], entry: dict[str, Any], method: str) -> list[dict[str, Any]]:
    return [
        r
        for r in metrics["runs"]
        if r["split"] == entry["split"] and r["pruner"] == entry["pruner"] and r["method"] == method
    ]


def _pam_ratios(entry: dict[str, Any]) -> str:
    parts = [
        f"{_label(name.split('/')[0])} / {_label(name.split('/')[1])} = {value:.2f}×"
        for name, value in entry["ratios"].items()
    ]
    return "; ".join(parts)


def _setting(setting: dict[str, Any]) -> str:
    if "share" in setting:
        return f"share {setting['share']:g}"
    return f"α {setting['alpha_conv']:.3g} / {setting['alpha_fc']:.3g}"


def _merge_note(merges: dict[str, Any]) -> str:
    """Which merging knob each method ended with, and the settings that missed before it."""
    parts = []
    for method, merge in merges.items():
        missed = [
            _setting(t) + (" (merge failed)" if "error" in t else " (missed the tolerance)")
            for t in merge["tried"]
            if "error" in t or not t["meets"]
        ]
        chosen = _setting(merge["setting"]) if merge["setting"] else "none"
        parts.append(
            f"{_label(method)} {chosen}" + (f" after {', '.join(missed)}" if missed else "")
        )
    return (
        "Merging knobs (relaxed until the unpruned network met the tolerance): "
        + "; ".join(parts)
        + "."
    )


def _render_one(metrics: dict[str, Any], entry: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    methods = list(entry["total_macs"])
    tasks = entry["tasks"]
    single = metrics["single_task_accuracy"][entry["split"]]
    config = metrics["config"]
    reference = ", ".join(
        f"{_short(t)} {100 * single['test'][t]:.1f} % (validation {100 * single['validation'][t]:.1f} %)"
        for t in tasks
    )
    intro = (
        f"#### {len(tasks)} tasks (`{entry['split']}`), {entry['pruner']} pruner\n\n"
        f"Single-task LeNet-5, test accuracy: {reference}. Pruned in steps of "
        f"{100 * config['step_ratio']:.0f} % of the remaining channels, fine-tuned "
        f"{config['finetune_steps']} steps after each; kept: the last model with every task's "
        f"validation accuracy at most {config['accuracy_tolerance']:g} point(s) below its "
        f"single-task network's (stopped after {config['patience']} misses in a row). "
        f"{_merge_note(metrics['merges'][entry['split']])}"
    )
    missed = {m for m in methods if not entry["meets_tolerance"][m]}
    cells: dict[tuple[str, ...], dict[str, str]] = {}
    for row in rows:
        mean = sum(row["accuracy"].values()) / len(row["accuracy"])
        mark = "†" if row["method"] in missed else ""
        cells.setdefault(tuple(row["tasks"]), {})[row["method"]] = (
            f"{100 * mean:.1f} % / {_macs(row['macs'])}{mark}"
        )
    body = [[_combination(c), *(v.get(m, "–") for m in methods)] for c, v in cells.items()]
    body.append(["**total MACs**", *(f"**{_macs(entry['total_macs'][m])}**" for m in methods)])
    body.append(
        ["total MACs before pruning", *(_macs(entry["unpruned_total_macs"][m]) for m in methods)]
    )
    body.append([
        "pruning steps kept",
        *("/".join(str(r["steps"]) for r in _runs(metrics, entry, m)) for m in methods),
    ])  # fmt: skip
    parts = [intro, _table(["tasks", *(_label(m) for m in methods)], body)]
    notes = [
        "Cells: mean test accuracy of the combination's tasks / conv+linear MACs per sample "
        "(no merging: the sum of the separately pruned networks)."
    ]
    if missed:
        notes.append("†: did not meet the tolerance even before pruning (reported unpruned).")
    for method, message in entry.get("failed", {}).items():
        notes.append(f"{_label(method)}: the merge failed ({message}).")
    notes.append(f"Total-MAC ratios: {_pam_ratios(entry)} ({PAPER_RATIOS}).")
    return "\n\n".join([*parts, " ".join(notes)])


def render_pam(metrics: dict[str, Any]) -> str:
    """Markdown: one table per split × pruner (rows: task combinations; cells: acc % / MACs)."""
    tables = [_render_one(metrics, entry, rows) for entry, rows in _tables(metrics)]
    lines = "\n".join(f"- {line}" for line in pam_summaries(metrics))
    return "\n\n".join([*tables, lines])


def pam_summaries(metrics: dict[str, Any]) -> list[str]:
    """One line per table: the method with the fewest total MACs, and by how much."""
    lines = []
    for entry, _ in _tables(metrics):
        total, ratios = entry["total_macs"], entry["ratios"]
        eligible = [m for m in total if entry["meets_tolerance"][m]] or list(total)
        ranked = sorted(eligible, key=lambda m: total[m])
        best = ranked[0]
        line = (
            f"PAM table ({len(entry['tasks'])} tasks, {entry['pruner']}): fewest total MACs: "
            f"{_label(best)} {_macs(total[best])}"
        )
        is_pam = best.startswith("pam-")
        rivals = [m for m in ranked if m.startswith("pam-") != is_pam]
        if rivals:
            kind = "baseline" if is_pam else "PAM"
            line += (
                f", {total[rivals[0]] / total[best]:.2f}× fewer than the best {kind} "
                f"({_label(rivals[0])})"
            )
        excluded = [_label(m) for m in total if m not in eligible]
        if excluded:
            line += f" ({', '.join(excluded)} missed the tolerance)"
        pam = next((m for m in total if m.startswith("pam-")), None)
        if pam:
            line += f"; {_label(pam)}: " + ", ".join(
                f"{_label(other)} / PAM = {ratios[f'{other}/{pam}']:.2f}×"
                for other in ("no-merge", "mtz")
                if f"{other}/{pam}" in ratios
            )
        if "pam-subsets/pam-paper" in ratios:
            line += f"; subsets / paper grouping = {ratios['pam-subsets/pam-paper']:.2f}×"
        lines.append(line)
    return lines


def plot_pam(results: dict[str, Any], out_dir: Path, plt: Any) -> list[str]:
    """Bar charts of MACs per task combination and method, one PNG per split; the file names."""
    metrics = results.get("metrics", {}).get("pam")
    if not metrics:
        return []
    written = []
    for split in dict.fromkeys(e["split"] for e in metrics["summary"]):
        tables = [(e, rows) for e, rows in _tables(metrics) if e["split"] == split]
        combinations = list(dict.fromkeys(tuple(r["tasks"]) for r in tables[0][1]))
        width = min(16.0, max(6.0, 0.5 * len(combinations)))
        fig, axes = plt.subplots(len(tables), 1, figsize=(width, 3.6 * len(tables)), squeeze=False)
        for axis, (entry, rows) in zip(axes[:, 0], tables, strict=True):
            methods = list(entry["total_macs"])
            bar = 0.8 / len(methods)
            for index, method in enumerate(methods):
                macs = {tuple(r["tasks"]): r["macs"] for r in rows if r["method"] == method}
                positions = [
                    i + (index - (len(methods) - 1) / 2) * bar for i in range(len(combinations))
                ]
                axis.bar(
                    positions, [macs[c] / 1e3 for c in combinations], bar, label=_label(method)
                )
            axis.set_xticks(range(len(combinations)))
            axis.set_xlim(-0.6, len(combinations) - 0.4)
            axis.set_xticklabels(
                [_combination(c) for c in combinations], rotation=90 if len(combinations) > 4 else 0,
                fontsize=7 if len(combinations) > 4 else 9,
            )  # fmt: skip
            axis.set(ylabel="MACs per sample (k)", title=f"{split}, {entry['pruner']} pruner")
            axis.legend(fontsize=7)
        fig.tight_layout()
        name = f"pam_macs_{split}.png"
        fig.savefig(Path(out_dir) / name, dpi=120)
        plt.close(fig)
        written.append(name)
    return written
