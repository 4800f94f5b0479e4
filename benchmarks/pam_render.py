"""The PAM table in the paper's shape, its one-line summaries and a MACs bar chart.

``metrics`` is what :func:`benchmarks.pam_suite.run_pam_suite` returns; every
number printed here is read from it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.pam_stats import (
    by_seed,
    mean_sd,
    method_runs,
    metric_tables,
    pam_comparisons,
    pam_headline,
    seed_of,
    summary_entries,
)

__all__ = [
    "METHOD_LABELS",
    "mean_sd",
    "pam_comparisons",
    "pam_headline",
    "pam_summaries",
    "plot_pam",
    "render_pam",
]

METHOD_LABELS: dict[str, str] = {
    "no-merge": "no merging",
    "mtz": "MTZ",
    "pam-paper": "PAM (paper)",
    "pam-subsets": "PAM (subsets)",
    "pam-paper-relative": "PAM (paper, relative relevance)",
    "pam-subsets-relative": "PAM (subsets, relative relevance)",
}
PAPER_RATIOS = "the paper: up to 4.87× vs no merging, 2.01× vs MTZ"
MODEL_LABELS: dict[str, str] = {"lenet5": "LeNet-5", "vgg": "VGG-style network"}


def _model(metrics: dict[str, Any], split: str) -> str:
    """The single-task networks of ``split`` in words (results before ``models``: LeNet-5)."""
    model = metrics.get("models", {}).get(split, {"name": "lenet5", "options": {}})
    options = ", ".join(f"{k} {v}" for k, v in model["options"].items())
    return MODEL_LABELS.get(model["name"], model["name"]) + (f" ({options})" if options else "")


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


def _spread(values: list[float], digits: int = 2, suffix: str = "×") -> str:
    mean, sd = mean_sd(values)
    return f"{mean:.{digits}f}{suffix}" + ("" if sd is None else f" ± {sd:.{digits}f}")


def _gap(points: float) -> str:
    """``1.20 points below`` / ``0.50 points above`` (``points``: how far below, may be < 0)."""
    return (
        f"{abs(points):.2f} points {'below' if points > 0 else 'above' if points < 0 else 'from'}"
    )


def _setting(setting: dict[str, Any]) -> str:
    if "share" in setting:
        return f"share {setting['share']:g}"
    if "relative_threshold" in setting:
        return f"relative threshold {setting['relative_threshold']:g}"
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
    split, pruner = entry["split"], entry["pruner"]
    entries = summary_entries(metrics, split, pruner)
    seeds = [seed_of(e) for e in entries]
    singles = [by_seed(metrics["single_task_accuracy"][split], s) for s in seeds]
    config = metrics["config"]
    reference = ", ".join(
        f"{_short(t)} {_spread([100 * x['test'][t] for x in singles], 1, ' %')} "
        f"(validation {_spread([100 * x['validation'][t] for x in singles], 1, ' %')})"
        for t in tasks
    )
    step = (
        f"Pruned in steps of {100 * config['step_ratio']:.0f} % of the "
        + (
            f"pruned groups' neurons by one threshold across layers (the released PAM pruner: "
            f"Taylor gates read while training {config.get('gate_batches')} SGD-Nesterov batches "
            f"at lr {config.get('gate_lr')}; groups pruned: {config['pruned_groups']})"
            if pruner == "gates"
            else "remaining channels of every pruned layer"
        )
        + f", fine-tuned {config['finetune_steps']} steps after each"
    )
    stop = (
        f"a fixed schedule of up to {config['max_pruning_steps']} steps"
        if config.get("schedule") == "fixed"
        else f"stopped after {config['patience']} misses in a row"
    )
    intro = (
        f"#### {len(tasks)} tasks (`{split}`), {pruner} pruner, seeds {seeds}\n\n"
        f"Single-task {_model(metrics, split)}, test accuracy: {reference}. {step}; kept: the "
        f"last model with every task's validation accuracy at most "
        f"{config['accuracy_tolerance']:g} point(s) below its single-task network's ({stop})"
        + ("; then whole groups deleted while that held" if config.get("delete_groups") else "")
        + f". {_merge_note(by_seed(metrics['merges'][split], seeds[0]))}"
        + (f" (seed {seeds[0]})" if len(seeds) > 1 else "")
    )
    missed = {m for m in methods if not all(e["meets_tolerance"][m] for e in entries)}
    pams = [m for m in methods if m.startswith("pam-")]
    cells: dict[tuple[str, ...], dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        cells.setdefault(tuple(row["tasks"]), {}).setdefault(row["method"], []).append(row)
    ratio_columns = [(o, p) for p in pams for o in ("no-merge", "mtz") if o in methods]
    body = []
    for combination, by_method in cells.items():
        line = [_combination(combination)]
        for m in methods:
            found = by_method.get(m, [])
            if not found:
                line.append("–")
                continue
            accuracy = [100 * sum(r["accuracy"].values()) / len(r["accuracy"]) for r in found]
            macs = mean_sd([float(r["macs"]) for r in found])[0]
            mark = "†" if m in missed else ""
            line.append(f"{mean_sd(accuracy)[0]:.1f} % / {_macs(macs)}{mark}")
        for other, pam in ratio_columns:
            mine = {seed_of(r): r["macs"] for r in by_method.get(pam, [])}
            theirs = {seed_of(r): r["macs"] for r in by_method.get(other, [])}
            values = [theirs[s] / mine[s] for s in mine if s in theirs]
            line.append(_spread(values) if values else "–")
        body.append(line)
    totals = {m: [float(e["total_macs"][m]) for e in entries] for m in methods}
    body.append([
        "**total MACs**", *(f"**{_macs(mean_sd(totals[m])[0])}**" for m in methods),
        *(f"**{_spread([e['ratios'][f'{o}/{p}'] for e in entries])}**" for o, p in ratio_columns),
    ])  # fmt: skip
    body.append([
        "total MACs before pruning",
        *(_macs(mean_sd([float(e["unpruned_total_macs"][m]) for e in entries])[0]) for m in methods),
        *("" for _ in ratio_columns),
    ])  # fmt: skip
    body.append([
        "pruning steps kept",
        *("/".join(str(r["steps"]) for r in method_runs(metrics, entry, m) if seed_of(r) == seeds[0])
          for m in methods),
        *("" for _ in ratio_columns),
    ])  # fmt: skip
    header = ["tasks", *(_label(m) for m in methods),
              *(f"{_label(o)} / {_label(p)}" for o, p in ratio_columns)]  # fmt: skip
    parts = [intro, _table(header, body)]
    notes = [
        "Cells: mean test accuracy of the combination's tasks / conv+linear MACs per sample "
        "(no merging: the sum of the separately pruned networks), means over seeds; ratio "
        "columns: baseline MACs / PAM MACs, mean ± sd over seeds."
    ]
    if missed:
        notes.append("†: did not meet the tolerance even before pruning (reported unpruned).")
    for method, message in entry.get("failed", {}).items():
        notes.append(f"{_label(method)}: the merge failed ({message}).")
    for c in pam_comparisons(metrics):
        if (c["split"], c["pruner"]) != (split, pruner):
            continue
        caps = c["total"]["caps"]
        cap = f" (cap {mean_sd(caps)[0]:.2f}×)" if caps else ""
        gap = (
            ""
            if c["accuracy_gap"] is None
            else f"; worst task {_gap(c['accuracy_gap'])} its single-task network"
        )
        notes.append(
            f"{_label(c['baseline'])} / {_label(c['method'])}: best combination "
            f"{_combination(c['best']['tasks'])} {_spread(c['best']['values'])}, total "
            f"{_spread(c['total']['values'])}{cap}{gap}."
        )
    notes.append(
        f"({PAPER_RATIOS}, per combination. A ratio of totals is capped when no combination is "
        "cheaper than its costliest task's single pruned network: 4/3 for 2 equal tasks, "
        "80/31 ≈ 2.58 for 5.)"
    )
    return "\n\n".join([*parts, " ".join(notes)])


def render_pam(metrics: dict[str, Any]) -> str:
    """Markdown: one table per split × pruner (rows: task combinations; cells: acc % / MACs)."""
    tables = [_render_one(metrics, entry, rows) for entry, rows in metric_tables(metrics)]
    lines = "\n".join(f"- {line}" for line in pam_summaries(metrics))
    return "\n\n".join([*tables, lines])


def pam_summaries(metrics: dict[str, Any]) -> list[str]:
    """One line per table: the fewest total MACs (mean over seeds), the best combination, the cap."""
    lines = []
    comparisons = pam_comparisons(metrics)
    for entry, _ in metric_tables(metrics):
        entries = summary_entries(metrics, entry["split"], entry["pruner"])
        methods = list(entry["total_macs"])
        total = {m: mean_sd([float(e["total_macs"][m]) for e in entries])[0] for m in methods}
        meets = {m: all(e["meets_tolerance"][m] for e in entries) for m in methods}
        eligible = [m for m in methods if meets[m]] or methods
        ranked = sorted(eligible, key=lambda m: total[m])
        best = ranked[0]
        line = (
            f"PAM table ({len(entry['tasks'])} tasks, {entry['pruner']}, {len(entries)} seed(s)): "
            f"fewest total MACs: {_label(best)} {_macs(total[best])}"
        )
        is_pam = best.startswith("pam-")
        rivals = [m for m in ranked if m.startswith("pam-") != is_pam]
        if rivals:
            kind = "baseline" if is_pam else "PAM"
            line += (
                f", {total[rivals[0]] / total[best]:.2f}× fewer than the best {kind} "
                f"({_label(rivals[0])})"
            )
        excluded = [_label(m) for m in methods if m not in eligible]
        if excluded:
            line += f" ({', '.join(excluded)} missed the tolerance)"
        pam = next((m for m in methods if m.startswith("pam-")), "")
        mine = [c for c in comparisons if (c["split"], c["pruner"], c["method"]) ==
                (entry["split"], entry["pruner"], pam)]  # fmt: skip
        if mine:
            line += f"; {_label(pam)}: " + ", ".join(
                f"{_label(c['baseline'])} / PAM best combination {_spread(c['best']['values'])}, "
                f"total {_spread(c['total']['values'])}"
                + (f" (cap {mean_sd(c['total']['caps'])[0]:.2f}×)" if c["total"]["caps"] else "")
                for c in mine
            )
        if "pam-subsets/pam-paper" in entry["ratios"]:
            ratio = [e["ratios"]["pam-subsets/pam-paper"] for e in entries]
            line += f"; subsets / paper grouping = {_spread(ratio)}"
        lines.append(line)
    return lines


def plot_pam(results: dict[str, Any], out_dir: Path, plt: Any) -> list[str]:
    """Bar charts of MACs per task combination and method, one PNG per split; the file names."""
    metrics = results.get("metrics", {}).get("pam")
    if not metrics:
        return []
    written = []
    for split in dict.fromkeys(e["split"] for e in metrics["summary"]):
        tables = [(e, rows) for e, rows in metric_tables(metrics) if e["split"] == split]
        combinations = list(dict.fromkeys(tuple(r["tasks"]) for r in tables[0][1]))
        width = min(16.0, max(6.0, 0.5 * len(combinations)))
        fig, axes = plt.subplots(len(tables), 1, figsize=(width, 3.6 * len(tables)), squeeze=False)
        for axis, (entry, rows) in zip(axes[:, 0], tables, strict=True):
            methods = list(entry["total_macs"])
            bar = 0.8 / len(methods)
            for index, method in enumerate(methods):
                found: dict[tuple[str, ...], list[float]] = {}
                for r in rows:
                    if r["method"] == method:
                        found.setdefault(tuple(r["tasks"]), []).append(float(r["macs"]))
                macs = {c: mean_sd(v)[0] for c, v in found.items()}  # mean over seeds
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
