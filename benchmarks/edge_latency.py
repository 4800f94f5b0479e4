"""CPU latency on the edge: dense vs CUT-compact, in PyTorch and in onnxruntime, one thread.

Run: ``python -m benchmarks.edge_latency [--repeats 20] [--out edge.json]``.

For each zoo model (multi-task, random He/default init), a CUT-compact copy
(``cut_prune`` removing ``pruning_ratio`` of the channels, scored on random
batches: this measures speed, not accuracy, so no training is needed) is
exported to ONNX (``cut_plugin.export.export_onnx``, dynamic batch; checked
against PyTorch with ``check_onnx``). Both are timed at each batch size: PyTorch
with ``benchmarks.measure.latency_ms(threads=1)`` and onnxruntime with one
intra-op and one inter-op thread, the same warm-up and repeats; dense and compact
alternate over ``rounds`` (median of the rounds' medians, in ms).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from adapters.registry import build
from adapters.torch_pruning import count_macs
from benchmarks.measure import environment, git_sha, latency_ms
from benchmarks.models import MODELS, build_model
from benchmarks.needs import module_need
from benchmarks.part import Part
from cut_plugin import EXPORTERS, check_onnx, export_onnx
from cut_plugin.vocabulary import check_ratio

__all__ = [
    "PART",
    "EdgeConfig",
    "main",
    "ort_latency_ms",
    "ort_session",
    "render_edge",
    "run_edge_latency",
]

DEFAULT_MODELS: dict[str, dict[str, Any]] = {
    "resnet18": {"width": 16, "blocks": [1, 1, 1, 1]},
    "mobilenetv2": {"width": 16},
}


@dataclass(frozen=True)
class EdgeConfig:
    """Models (``{zoo name: build options}``), tasks, pruning and timing for the edge benchmark."""

    models: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: dict(DEFAULT_MODELS))
    tasks: Mapping[str, int] = field(default_factory=lambda: {"digit": 10, "parity": 2, "ge5": 2})
    kept_tasks: tuple[str, ...] | None = None  # tasks the compact model serves; None = all
    pruning_ratio: float = 0.5
    input_size: int = 28
    batch_sizes: tuple[int, ...] = (1, 64)
    repeats: int = 20
    warmup: int = 3
    rounds: int = 3  # interleaved dense/compact rounds; the median of their medians is reported
    score_batches: int = 2
    exporter: str = "dynamo"

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in MODELS]
        if not self.models or unknown:
            raise ValueError(f"models: unknown or none {unknown!r}; choose from {sorted(MODELS)}")
        if not self.tasks:
            raise ValueError("tasks must name at least one task {task: classes}")
        if self.kept_tasks is not None:
            missing = [t for t in self.kept_tasks if t not in self.tasks]
            if not self.kept_tasks or missing:
                raise ValueError(
                    f"kept_tasks {self.kept_tasks!r} must be tasks of {list(self.tasks)}"
                )
        check_ratio(self.pruning_ratio)
        for name in ("input_size", "repeats", "rounds", "score_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {self.warmup!r}")
        sizes = tuple(self.batch_sizes)
        if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
            raise ValueError(f"batch_sizes must be positive ints, got {self.batch_sizes!r}")
        if self.exporter not in EXPORTERS:
            raise ValueError(f"exporter must be one of {list(EXPORTERS)}, got {self.exporter!r}")


def _inputs(batch: int, size: int, seed: int) -> Tensor:
    return torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))


def _random_batches(config: EdgeConfig, seed: int) -> list[tuple[Tensor, dict[str, Tensor]]]:
    """Random ``(inputs, {task: class})`` batches: the scores only decide which channels go."""
    generator = torch.Generator().manual_seed(seed)
    result = []
    for index in range(config.score_batches):
        x = _inputs(32, config.input_size, seed + 1000 + index)
        targets = {
            t: torch.randint(0, c, (32,), generator=generator) for t, c in config.tasks.items()
        }
        result.append((x, targets))
    return result


def ort_session(path: Path) -> Any:
    """An onnxruntime CPU session on ``path``: one intra-op and one inter-op thread, all graph optimisations."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_latency_ms(session: Any, x: Tensor, *, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall-clock milliseconds of ``session.run`` on ``x`` (as ``latency_ms`` does for torch)."""
    feed = {session.get_inputs()[0].name: x.numpy()}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def _variants(config: EdgeConfig, name: str, seed: int) -> dict[str, nn.Module]:
    """``{"dense": model, "compact": CUT-compact copy}`` for the zoo model ``name``."""
    torch.manual_seed(seed)
    dense = build_model(
        name, tasks=dict(config.tasks), input_size=config.input_size, **config.models[name]
    ).eval()
    kept = list(config.kept_tasks or config.tasks)
    compact = build(
        {"prune": "cut", "framework": "torch_pruning"},
        model=dense,
        example_inputs=(_inputs(2, config.input_size, seed),),
        tasks=kept,
        losses=dict.fromkeys(kept, F.cross_entropy),
        data=_random_batches(config, seed),
        pruning_ratio=config.pruning_ratio,
        progress=False,
    ).eval()
    return {"dense": dense, "compact": compact}


def _measure_model(
    config: EdgeConfig, name: str, folder: Path, seed: int, say: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Export and check both variants, then time them interleaved (drift on a shared CPU hits both)."""
    variants = _variants(config, name, seed)
    facts: dict[str, dict[str, Any]] = {}
    sessions = {}
    for variant, model in variants.items():
        path = folder / f"{name}-{variant}.onnx"
        start = time.perf_counter()
        outputs = export_onnx(
            model,
            _inputs(2, config.input_size, seed),
            path,
            exporter=config.exporter,  # type: ignore[arg-type]
        )
        export_s = time.perf_counter() - start
        error = check_onnx(model, path, _inputs(3, config.input_size, seed + 1), atol=1e-4)
        macs, params = count_macs(model, (_inputs(1, config.input_size, seed),))
        sessions[variant] = ort_session(path)
        facts[variant] = {
            "model": name,
            "variant": variant,
            "tasks": outputs,
            "params": params,
            "macs": macs,
            "onnx_bytes": path.stat().st_size,
            "export_s": export_s,
            "onnx_max_abs_diff": error,
        }
    rows = []
    timing = {"repeats": config.repeats, "warmup": config.warmup}
    for batch in config.batch_sizes:
        x = _inputs(batch, config.input_size, seed + batch)
        runs: dict[str, dict[str, list[float]]] = {v: {"torch": [], "ort": []} for v in variants}
        for _ in range(config.rounds):
            for variant, model in variants.items():
                runs[variant]["torch"].append(latency_ms(model, x, threads=1, **timing))
                runs[variant]["ort"].append(ort_latency_ms(sessions[variant], x, **timing))
        for variant in variants:
            torch_ms = statistics.median(runs[variant]["torch"])
            ort_ms = statistics.median(runs[variant]["ort"])
            rows.append(
                {
                    **facts[variant],
                    "batch": batch,
                    "torch_ms": torch_ms,
                    "ort_ms": ort_ms,
                    "torch_ms_rounds": runs[variant]["torch"],
                    "ort_ms_rounds": runs[variant]["ort"],
                }
            )
            say(
                f"{name:12s} {variant:8s} batch {batch:3d}: torch {torch_ms:8.3f} ms, ort {ort_ms:8.3f} ms"
            )
    return rows


def _ratios(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per model and batch: dense/compact speed-ups in each runtime and PyTorch/ORT factors."""
    table = {(r["model"], r["batch"], r["variant"]): r for r in rows}
    result = []
    for model, batch in dict.fromkeys((r["model"], r["batch"]) for r in rows):
        dense, compact = table[model, batch, "dense"], table[model, batch, "compact"]
        result.append(
            {
                "model": model,
                "batch": batch,
                "params_ratio": compact["params"] / dense["params"],
                "macs_ratio": compact["macs"] / dense["macs"],
                "torch_speedup": dense["torch_ms"] / compact["torch_ms"],
                "ort_speedup": dense["ort_ms"] / compact["ort_ms"],
                "ort_vs_torch_dense": dense["torch_ms"] / dense["ort_ms"],
                "ort_vs_torch_compact": compact["torch_ms"] / compact["ort_ms"],
                "dense_torch_vs_compact_ort": dense["torch_ms"] / compact["ort_ms"],
            }
        )
    return result


def run_edge_latency(config: EdgeConfig, *, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Measure every model of ``config``; ``{"run_info", "metrics": {"rows", "ratios"}, "meta_info"}``."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            'the edge benchmark needs onnxruntime: pip install "cut-pam[edge]"'
        ) from error

    def say(line: str) -> None:
        if progress:
            tqdm.write(line, file=sys.stderr)

    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cut-pam-edge-") as folder:
        bar = tqdm(config.models, desc="edge", unit="model", disable=not progress)
        for name in bar:
            bar.set_postfix(model=name)
            rows += _measure_model(config, name, Path(folder), seed, say)
    meta = environment()
    meta["onnxruntime"] = onnxruntime.__version__
    return {
        "run_info": {
            "benchmark": "edge_latency",
            "config": asdict(config),
            "seed": seed,
            "git_sha": git_sha(),
            "seconds": time.perf_counter() - start,
        },
        "metrics": {"rows": rows, "ratios": _ratios(rows)},
        "meta_info": meta,
    }


def render_edge(metrics: Mapping[str, Any]) -> str:
    """Markdown: median ms per model and batch, dense vs compact, PyTorch vs onnxruntime.

    Accepts the whole result of :func:`run_edge_latency` or its ``metrics``.
    """
    metrics = metrics.get("metrics", metrics)
    table = {(r["model"], r["batch"], r["variant"]): r for r in metrics["rows"]}
    lines = [
        "| model | batch | params dense → compact | MACs | PyTorch dense ms | PyTorch compact ms "
        "| PyTorch speed-up | ORT dense ms | ORT compact ms | ORT speed-up "
        "| ORT vs PyTorch (dense / compact) | max abs diff ORT |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for ratio in metrics["ratios"]:
        dense = table[ratio["model"], ratio["batch"], "dense"]
        compact = table[ratio["model"], ratio["batch"], "compact"]
        diff = max(dense["onnx_max_abs_diff"], compact["onnx_max_abs_diff"])
        lines.append(
            f"| {ratio['model']} | {ratio['batch']} "
            f"| {dense['params']:,} → {compact['params']:,} ({ratio['params_ratio']:.0%}) "
            f"| {ratio['macs_ratio']:.0%} "
            f"| {dense['torch_ms']:.3f} | {compact['torch_ms']:.3f} | {ratio['torch_speedup']:.2f}× "
            f"| {dense['ort_ms']:.3f} | {compact['ort_ms']:.3f} | {ratio['ort_speedup']:.2f}× "
            f"| {ratio['ort_vs_torch_dense']:.2f}× / {ratio['ort_vs_torch_compact']:.2f}× "
            f"| {diff:.1e} |"
        )
    lines.append(
        "\nMedian over interleaved rounds of the median of the repeats, one CPU thread in each runtime; speed-up = dense ms / compact ms; "
        "ORT vs PyTorch = PyTorch ms / ORT ms; MACs = compact / dense."
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark with the default models, print the table, optionally write JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.edge_latency", description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ratio", type=float, default=0.5, help="pruning_ratio of the compact model"
    )
    parser.add_argument("--exporter", default="dynamo", choices=list(EXPORTERS))
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    config = EdgeConfig(
        repeats=args.repeats, rounds=args.rounds, pruning_ratio=args.ratio, exporter=args.exporter
    )
    results = run_edge_latency(config, seed=args.seed, progress=not args.no_progress)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2, default=str))
    print(render_edge(results))
    return results


PART = Part(
    name="edge",
    title="Edge: dense vs compact in PyTorch and onnxruntime (one CPU thread)",
    config=EdgeConfig,
    run=run_edge_latency,
    render=render_edge,
    needs=lambda config: [
        module_need("onnx", "ONNX export"),
        module_need("onnxruntime", "onnxruntime latency"),
        *(
            [module_need("onnxscript", "the dynamo ONNX exporter")]
            if config.exporter == "dynamo"
            else []
        ),
    ],
)

if __name__ == "__main__":
    main()
