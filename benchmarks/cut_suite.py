"""The CUT table: a pre-trained multi-task model pruned for a subset of its tasks.

Every method (``benchmarks.cut_methods``) gets the same pre-trained model, the
same decomposition (unselected heads dropped, output layers protected), the
same scoring data and the same fine-tuning budget; only how parameters are
chosen differs. Rows are methods, columns per-task accuracy (before and after
fine-tuning), parameters, MACs, CPU latency (batch 1 and 64) and the method's
own run time.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from adapters.torch_pruning import count_macs
from benchmarks.cut_methods import CUT_METHODS, Context, check_table
from benchmarks.data import TaskData, batches, load_data
from benchmarks.markdown import number, percent, table
from benchmarks.measure import latency_ms, timed
from benchmarks.needs import data_needs, module_need
from benchmarks.part import Part
from benchmarks.training import evaluate, pretrained
from cut_plugin import finetune, mask_sparsity, select_tasks

__all__ = ["CUT_METHODS", "PART", "CUTSuiteConfig", "cut_summaries", "cut_tables", "run_cut_suite"]


@dataclass(frozen=True)
class CUTSuiteConfig:
    """One CUT table: model, data, task subsets, ratios, methods and budgets."""

    model: str = "resnet18"
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"width": 16, "blocks": [1, 1, 1, 1]}
    )
    data: str = "multi_head"
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    subsets: tuple[tuple[str, ...], ...] = (("digit", "parity"),)
    ratios: tuple[float, ...] = (0.5,)
    methods: tuple[str, ...] = ("cut", "disparse", "tp-magnitude", "tp-taylor")
    pretrain_epochs: int = 6
    score_batches: int = 20
    batch_size: int = 64
    finetune_steps: int = 200
    finetune_lr: float = 3e-4
    latency_repeats: int = 15

    def __post_init__(self) -> None:
        check_table(self.methods, self.ratios, self.subsets)


def _measure(model: nn.Module, ctx: Context) -> dict[str, float]:
    x1 = ctx.data.test.inputs[:1]
    x64 = ctx.data.test.inputs[:64]
    macs, params = count_macs(model, x1)
    return {
        "macs": macs,
        "params": params,
        "latency_b1_ms": latency_ms(model, x1, repeats=ctx.config.latency_repeats),
        "latency_b64_ms": latency_ms(model, x64, repeats=ctx.config.latency_repeats),
    }


def run_cut_suite(
    config: CUTSuiteConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    cache_dir: str | os.PathLike[str] = ".cache/cut-pam",
    device: str = "cpu",
) -> dict[str, Any]:
    """Run every method on every subset × ratio; return ``{"config", "pretrained_accuracy", "rows"}``.

    The pre-trained model is trained once and cached in ``cache_dir``. ``device``:
    where the models train, are pruned and evaluated (latencies stay CPU latencies).
    """
    data = load_data(config.data, seed=seed, **config.data_kwargs)
    model = pretrained(
        config.model,
        data,
        seed=seed,
        cache_dir=cache_dir,
        model_kwargs=config.model_kwargs,
        epochs=config.pretrain_epochs,
        batch_size=config.batch_size,
        progress=progress,
        device=device,
    )
    base_accuracy = evaluate(model, data)
    rows: list[dict[str, Any]] = []
    cases = [
        (s, r, m) for s in config.subsets for r in config.ratios for m in ("dense", *config.methods)
    ]
    cases = [c for c in cases if c[2] != "dense" or c[1] == config.ratios[0]]
    bar = tqdm(cases, desc="CUT suite", disable=not progress)
    for subset, ratio, name in bar:
        bar.set_postfix(tasks="+".join(subset), ratio=ratio, method=name)
        ctx = Context(model, data, list(subset), ratio, config, seed)
        torch.manual_seed(seed)
        if name == "dense":
            (pruned, masks), seconds = (select_tasks(model, ctx.tasks), None), 0.0
        else:
            (pruned, masks), seconds = timed(lambda ctx=ctx, name=name: CUT_METHODS[name](ctx))
        before = evaluate(pruned, data)
        tuned = pruned
        if name != "dense" and config.finetune_steps > 0:
            train_batches = _cycle_batches(data, config.batch_size, seed)
            tuned = finetune(
                pruned,
                train_batches,
                ctx.losses(),
                steps=config.finetune_steps,
                lr=config.finetune_lr,
                masks=masks,
                progress=False,
            )
        after = evaluate(tuned, data)
        rows.append({
            "tasks": list(subset),
            "ratio": 0.0 if name == "dense" else ratio,
            "method": name,
            "granularity": "weight" if name.endswith("-weight") else "channel",
            "accuracy_before_finetune": {t: before[t] for t in subset},
            "accuracy": {t: after[t] for t in subset},
            "sparsity": mask_sparsity(masks) if masks else None,
            "method_seconds": seconds,
            **_measure(tuned, ctx),
        })  # fmt: skip
    return {"config": asdict(config), "pretrained_accuracy": base_accuracy, "rows": rows}


def _cycle_batches(data: TaskData, batch_size: int, seed: int) -> Iterator:
    for epoch in itertools.count():
        yield from batches(data.train, batch_size, seed=seed * 7919 + epoch)


def _tables(rows: list[dict[str, Any]]) -> dict[tuple, list[dict]]:
    """The pruned rows per (task subset, ratio), in run order."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["method"] != "dense":
            groups.setdefault((tuple(row["tasks"]), row["ratio"]), []).append(row)
    return groups


def _mean_accuracy(row: dict[str, Any]) -> float:
    return sum(row["accuracy"].values()) / len(row["accuracy"])


def cut_tables(cut: dict[str, Any]) -> str:
    """One table per (task subset, ratio): methods as rows."""
    out = []
    dense = {tuple(r["tasks"]): r for r in cut["rows"] if r["method"] == "dense"}
    for (tasks, ratio), group in _tables(cut["rows"]).items():
        base = dense.get(tasks)
        header = ["method", "granularity"]
        header += [f"{t} acc (before FT)" for t in tasks]
        header += ["params", "MACs", "lat b1 (ms)", "lat b64 (ms)", "speed-up b64 / MAC red.",
                   "run time (s)"]  # fmt: skip
        body = []
        for row in ([base] if base else []) + group:
            efficiency = "–"
            if base and row is not base and row["granularity"] == "channel":
                speedup = base["latency_b64_ms"] / row["latency_b64_ms"]
                reduction = base["macs"] / row["macs"]
                efficiency = f"{speedup:.2f}× / {reduction:.2f}× = {speedup / reduction:.2f}"
            cells = [row["method"], row["granularity"]]
            cells += [
                f"{percent(row['accuracy'][t])} ({percent(row['accuracy_before_finetune'][t])})"
                for t in tasks
            ]
            cells += [
                number(row["params"]), number(row["macs"]), f"{row['latency_b1_ms']:.2f}",
                f"{row['latency_b64_ms']:.2f}", efficiency, f"{row['method_seconds']:.1f}",
            ]  # fmt: skip
            body.append(cells)
        out.append(
            f"#### Tasks {' + '.join(tasks)}, pruning ratio {ratio}\n\n" + table(header, body)
        )
    return "\n\n".join(out)


def cut_summaries(cut: dict[str, Any]) -> list[str]:
    """One line per table: its best method by mean accuracy and by how much."""
    lines = []
    for (tasks, ratio), rows in _tables(cut["rows"]).items():
        ranked = sorted(rows, key=_mean_accuracy, reverse=True)
        best, second = ranked[0], ranked[1] if len(ranked) > 1 else None
        gap = (
            f", {100 * (_mean_accuracy(best) - _mean_accuracy(second)):+.2f} points over "
            f"{second['method']}"
            if second
            else ""
        )
        lines.append(
            f"CUT table ({'+'.join(tasks)}, ratio {ratio}): best mean accuracy "
            f"{100 * _mean_accuracy(best):.2f}% by {best['method']}{gap}"
        )
    return lines


def plot_cut(cut: dict[str, Any], out: Path, plt: Any) -> list[str]:
    """Accuracy and batch-64 latency against MACs, one point per row; the file name."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in sorted({r["method"] for r in cut["rows"]}):
        rows = [r for r in cut["rows"] if r["method"] == method]
        macs = [r["macs"] / 1e6 for r in rows]
        left.scatter(macs, [100 * _mean_accuracy(r) for r in rows], label=method)
        right.scatter(macs, [r["latency_b64_ms"] for r in rows], label=method)
    left.set(
        xlabel="MACs (M)",
        ylabel="mean accuracy of the selected tasks (%)",
        title="Accuracy vs MACs",
    )
    right.set(xlabel="MACs (M)", ylabel="latency at batch 64 (ms)", title="CPU latency vs MACs")
    left.legend(fontsize=7)
    fig.tight_layout()
    name = "cut_accuracy_latency_vs_macs.png"
    fig.savefig(Path(out) / name, dpi=120)
    plt.close(fig)
    return [name]


PART = Part(
    name="cut",
    title="CUT: prune a pre-trained multi-task model for a subset of tasks",
    config=CUTSuiteConfig,
    run=run_cut_suite,
    render=cut_tables,
    summary=cut_summaries,
    plots=plot_cut,
    needs=lambda config: [
        *data_needs(config.data, config.data_kwargs),
        *[module_need("nni", f"method {m}") for m in config.methods if m.startswith("nni-")],
    ],
    devices=("cpu", "cuda"),
)
