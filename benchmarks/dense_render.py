"""The dense CUT tables' statistics and rendering: paired differences, headline, tables, plots.

Reads only the metrics :func:`benchmarks.dense_suite.run_dense_suite` returns, so
a ``results.json`` re-renders without re-running.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.dense_metrics import HIGHER_IS_BETTER
from benchmarks.markdown import number, table

__all__ = [
    "BASELINES",
    "CUT_ROWS",
    "CUT_VARIANTS",
    "PAPER_BUDGET",
    "comparisons",
    "dense_headline",
    "dense_summaries",
    "dense_tables",
    "paired",
    "plot_dense",
]

PAPER_BUDGET = {"lr": 1e-5, "steps": 1000}
"""The released fine-tuning recipe (Adam, ~1000 iterations at lr 1e-5)."""

CUT_ROWS = {"channel": "cut", "weight": "cut-weight"}
"""The CUT row of each granularity (the paper's method with this project's defaults)."""

CUT_VARIANTS = {"channel": ("cut-global",), "weight": ()}
"""CUT's variants also compared with the best other method (headline id ``cut.<kind>.<variant>.
vs_best_baseline``, e.g. ``cut-global``: global allocation at the per-layer methods' MACs)."""

BASELINES = {
    "channel": ("disparse", "disparse-pretrained", "tp-magnitude", "tp-taylor", "nni-l1", "scratch"),
    "weight": ("disparse-weight", "disparse-pretrained-weight", "disparse-static-weight",
               "magnitude-weight", "snip-init-weight", "random-init-weight"),
}  # fmt: skip
"""The other methods CUT is compared with, per granularity (CUT's own variants are not baselines)."""


def _mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
"""Two-sided 95 % Student t quantiles by degrees of freedom (1.96 beyond)."""


def paired(differences: Sequence[float]) -> tuple[float, list[float] | None]:
    """Mean of paired differences and its 95 % t-interval (None for one seed)."""
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return mean, None
    half = (
        T95.get(len(differences) - 1, 1.96)
        * statistics.stdev(differences)
        / math.sqrt(len(differences))
    )
    return mean, [mean - half, mean + half]


def _groups(dense: dict[str, Any]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for row in dense["rows"]:
        groups.setdefault((tuple(row["tasks"]), row["ratio"]), []).append(row)
    return groups


def _budget_names(dense: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for row in dense["rows"]:
        for budget in row["budgets"]:
            if budget not in names:
                names.append(budget)
    return names


def _by_method(rows: list[dict]) -> dict[str, list[dict]]:
    methods: dict[str, list[dict]] = {}
    for row in rows:
        methods.setdefault(row["method"], []).append(row)
    return methods


def _delta(rows: list[dict], budget: str) -> dict[int, float]:
    return {r["seed"]: r["budgets"][budget]["delta_m"] for r in rows if budget in r["budgets"]}


def _cut_rows() -> list[tuple[str, str]]:
    """``(granularity, method)`` of CUT's row and then its variants."""
    rows = list(CUT_ROWS.items())
    return rows + [(g, v) for g, variants in CUT_VARIANTS.items() for v in variants]


def comparisons(dense: dict[str, Any]) -> list[dict[str, Any]]:
    """CUT vs the best other method per granularity × subset × ratio × budget (paired over seeds)."""
    out = []
    for (tasks, ratio), rows in _groups(dense).items():
        methods = _by_method(rows)
        for granularity, cut in _cut_rows():
            others = [m for m in BASELINES[granularity] if m in methods]
            if cut not in methods or not others:
                continue
            for budget in _budget_names(dense):
                mine = _delta(methods[cut], budget)
                theirs = {m: _delta(methods[m], budget) for m in others}
                theirs = {m: v for m, v in theirs.items() if v}
                if not mine or not theirs:
                    continue
                best = max(theirs, key=lambda m: statistics.fmean(theirs[m].values()))
                seeds = sorted(set(mine) & set(theirs[best]))
                value, ci = paired([mine[s] - theirs[best][s] for s in seeds])
                out.append({
                    "granularity": granularity, "tasks": list(tasks), "ratio": ratio,
                    "budget": budget, "value": value, "ci95": ci, "seeds": len(seeds), "method": cut,
                    "baseline": best, "cut": statistics.fmean(mine.values()),
                    "best": statistics.fmean(theirs[best].values()),
                })  # fmt: skip
    return out


def _goal(granularity: str, ratio: float, budget: str) -> str | None:
    """The goal of the CUT issue for this setting (None where it sets none)."""
    if granularity == "weight":
        return ">= 1.0" if ratio >= 0.9 else None
    if ratio >= 0.7:
        return ">= 2.0" if budget == "short" else ">= 1.0" if budget in ("long", "paper") else None
    return ">= -0.3"


def dense_headline(dense: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``results.json`` headline entries of the dense tables (BENCHMARKS.md)."""
    data = dense["config"]["data"]
    entries = []
    for c in comparisons(dense):
        if c["budget"] == "0":
            continue
        kind = "structured" if c["granularity"] == "channel" else "unstructured"
        variant = "" if c["method"] == CUT_ROWS[c["granularity"]] else f"{c['method']}."
        entries.append({
            "id": f"cut.{kind}.{variant}vs_best_baseline",
            "setting": {"data": data, "tasks": c["tasks"], "ratio": c["ratio"], "budget": c["budget"]},
            "value": round(c["value"], 3), "unit": "Δm points",
            "ci95": None if c["ci95"] is None else [round(v, 3) for v in c["ci95"]],
            "seeds": c["seeds"], "baseline": c["baseline"], "goal": _goal(c["granularity"], c["ratio"], c["budget"]),
        })  # fmt: skip
    return entries


# --------------------------------------------------------------------------- rendering


def _cell(values: Sequence[float], digits: int = 1) -> str:
    if not values:
        return "–"
    mean, sd = _mean_sd(values)
    return f"{mean:.{digits}f}" if sd is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _sparsity(rows: Sequence[dict[str, Any]]) -> str:
    """Unstructured rows: the share of masked weights (their params/MACs stay dense)."""
    values = [r["sparsity"] for r in rows if r.get("sparsity") is not None]
    return f"{100 * statistics.fmean(values):.0f} %" if values else "–"


def _scale(name: str) -> float:
    """Fractions as percentages in the tables."""
    return 100.0 if HIGHER_IS_BETTER.get(name) and name != "delta_m" else 1.0


def dense_tables(dense: dict[str, Any]) -> str:
    """Per subset × ratio: Δm per budget (mean ± sd over seeds), then every metric at the longest."""
    budgets = _budget_names(dense)
    final = next((b for b in ("paper", "long") if b in budgets), budgets[-1])
    seeds = sorted({r["seed"] for r in dense["rows"]})
    out = [f"Seeds {seeds}. Δm in points vs the dense model (higher is better); cells mean ± sd over "
           f"seeds. Fine-tuning budgets (steps): {dense['config']['budgets']}"
           + (f" and `paper` = Adam lr {PAPER_BUDGET['lr']} × {PAPER_BUDGET['steps']}"
              if dense["config"].get("paper_budget") else "")
           + "; each budget reports the checkpoint with the best validation Δm, read on test."]  # fmt: skip
    dense_by_tasks: dict[tuple, list[dict]] = {}
    for row in dense["dense"]:
        dense_by_tasks.setdefault(tuple(row["tasks"]), []).append(row)
    for (tasks, ratio), rows in _groups(dense).items():
        methods = _by_method(rows)
        header = ["method", "granularity", *[f"Δm @ {b}" for b in budgets], "params", "MACs",
                  "weight sparsity", "lat b1 (ms)", "run time (s)"]  # fmt: skip
        body = []
        for name, group in methods.items():
            body.append([
                name, group[0]["granularity"],
                *[_cell(list(_delta(group, b).values())) for b in budgets],
                number(statistics.fmean(r["params"] for r in group)),
                number(statistics.fmean(r["macs"] for r in group)),
                _sparsity(group),
                f"{statistics.fmean(r['latency_b1_ms'] for r in group):.2f}",
                f"{statistics.fmean(r['method_seconds'] for r in group):.1f}",
            ])  # fmt: skip
        base = dense_by_tasks.get(tasks, [])
        if base:
            body.insert(0, ["dense", "–", *["0.0"] * len(budgets),
                            number(base[0]["params"]), number(base[0]["macs"]), "–",
                            f"{statistics.fmean(r['latency_b1_ms'] for r in base):.2f}", "–"])  # fmt: skip
        out.append(
            f"#### Tasks {' + '.join(tasks)}, pruning ratio {ratio}\n\n" + table(header, body)
        )
        # the per-task metrics, DiSparse-style, at the final budget
        names = {t: list(rows[0]["budgets"][final]["test"][t]) for t in tasks}
        header = ["method"] + [f"{t} {m}" for t in tasks for m in names[t]]
        body = []
        if base:
            body.append(["dense"] + [_cell([r["test"][t][m] * _scale(m) for r in base], 2)
                                     for t in tasks for m in names[t]])  # fmt: skip
        for name, group in methods.items():
            chosen = [r["budgets"][final]["test"] for r in group if final in r["budgets"]]
            body.append([name] + [_cell([c[t][m] * _scale(m) for c in chosen], 2)
                                  for t in tasks for m in names[t]])  # fmt: skip
        out.append(f"Every metric at budget `{final}` (fractions in %):\n\n" + table(header, body))
    lines = ["| setting | budget | CUT Δm | best other | its Δm | CUT − best (95 % CI) | seeds |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in comparisons(dense):
        ci = "" if c["ci95"] is None else f" [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]"
        lines.append(
            f"| {c['method']}: {c['granularity']} {'+'.join(c['tasks'])} @ {c['ratio']} | {c['budget']} | "
            f"{c['cut']:.2f} | {c['baseline']} | {c['best']:.2f} | {c['value']:+.2f}{ci} | {c['seeds']} |"
        )
    out.append("#### CUT against the best other method (paired over seeds)\n\n" + "\n".join(lines))
    return "\n\n".join(out)


def _label(comparison: dict[str, Any]) -> str:
    method = comparison["method"]
    return "CUT" if method == CUT_ROWS[comparison["granularity"]] else f"CUT variant {method}"


def dense_summaries(dense: dict[str, Any]) -> list[str]:
    """One line per subset × ratio × granularity at the longest budget: CUT vs the best other."""
    budgets = _budget_names(dense)
    final = next((b for b in ("paper", "long") if b in budgets), budgets[-1])
    lines = []
    for c in comparisons(dense):
        if c["budget"] not in (final, "short"):
            continue
        ci = "" if c["ci95"] is None else f" (95 % CI {c['ci95'][0]:+.2f} to {c['ci95'][1]:+.2f})"
        verdict = "leads" if c["value"] > 0 else "trails"
        lines.append(
            f"Dense scenes ({c['granularity']}, {'+'.join(c['tasks'])}, ratio {c['ratio']}, "
            f"budget {c['budget']}): {_label(c)} {verdict} the best other method ({c['baseline']}) by "
            f"{c['value']:+.2f} Δm points{ci}, {c['seeds']} seed(s)"
        )
    return lines


def plot_dense(dense: dict[str, Any], out: Path, plt: Any) -> list[str]:
    """Δm vs MACs per method (longest budget) and Δm vs fine-tuning budget; the file names."""
    budgets = _budget_names(dense)
    final = next((b for b in ("paper", "long") if b in budgets), budgets[-1])
    steps = {"0": 0, **dense["config"]["budgets"], "paper": PAPER_BUDGET["steps"]}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, group in _by_method(dense["rows"]).items():
        points = [
            (r["macs"] / 1e6, r["budgets"][final]["delta_m"])
            for r in group
            if final in r["budgets"]
        ]
        left.scatter(*zip(*points, strict=True), label=name, s=18)
        curve = [(steps[b], statistics.fmean(_delta(group, b).values()))
                 for b in budgets if b != "paper" and _delta(group, b)]  # fmt: skip
        right.plot(*zip(*curve, strict=True), marker="o", label=name)
    left.set(xlabel="MACs (M)", ylabel=f"Δm at budget {final} (points)", title="Δm vs MACs")
    right.set(xlabel="fine-tuning steps", ylabel="Δm (points, mean over seeds, subsets, ratios)",
              title="Δm vs fine-tuning budget")  # fmt: skip
    left.legend(fontsize=7)
    fig.tight_layout()
    name = "dense_delta_m.png"
    fig.savefig(Path(out) / name, dpi=120)
    plt.close(fig)
    return [name]
