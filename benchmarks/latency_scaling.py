"""Does a compact model turn its MAC reduction into CPU latency? By model width.

CUT at 50 % of channels on ResNet-18-style multi-task models of growing width
(random weights: this measures speed, not accuracy), batch 64, one CPU thread,
in PyTorch (eager) and in onnxruntime (one intra-op and one inter-op thread).
Goal: latency speed-up >= 0.8 of the MAC reduction. Small layers are dominated
by per-op overhead (BatchNorm, ReLU, adds, memory traffic) that MACs do not count.

Each compact model is made once per ``round_to`` (Torch-Pruning's channel-count
rounding: every layer keeps a multiple of it; 1 = no rounding, ``cut_prune``'s
default). The dense model and every compact variant are timed in turn within
each of ``rounds`` rounds call by call (interleaved, so drift on a shared CPU
hits them all alike); a figure is the median over the rounds of the median of
``repeats`` calls, in eval mode without gradients.
The runtime ``"torch_channels_last"`` times PyTorch with model and input in
``torch.channels_last`` memory format (dense and compact alike); ``"torchscript"``
times PyTorch's CPU inference route: ``export_torchscript(freeze=True)`` (BatchNorm
folded into the Conv before it), loaded back and passed through
``torch.jit.optimize_for_inference`` (oneDNN pre-packed convolutions).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from adapters.registry import build
from adapters.torch_pruning import count_macs
from benchmarks.edge_latency import ort_session
from benchmarks.models import build_model
from benchmarks.needs import Need, module_need
from benchmarks.part import Part
from cut_plugin import EXPORTERS, export_onnx, export_torchscript
from cut_plugin.vocabulary import check_ratio

__all__ = [
    "PART",
    "RUNTIMES",
    "LatencyScalingConfig",
    "latency_scaling_headline",
    "latency_scaling_summaries",
    "render_latency_scaling",
    "run_latency_scaling",
]

TASKS = {"digit": 10, "parity": 2, "ge5": 2}
RUNTIMES = ("torch", "onnxruntime", "torch_channels_last", "torchscript")
GOAL = 0.8


@dataclass(frozen=True)
class LatencyScalingConfig:
    """Model widths, CUT's pruning ratio, channel rounding, runtimes, the timed batch and repeats."""

    widths: tuple[int, ...] = (16, 32, 64)
    ratio: float = 0.5
    batch: int = 64
    repeats: int = 10
    rounds: int = 3
    warmup: int = 2
    round_to: tuple[int, ...] = (1, 8)
    """Compact variants, one per ``round_to``; the first is the headline's (1 = ``cut_prune``'s default)."""
    runtimes: tuple[str, ...] = ("torch", "onnxruntime", "torchscript")
    exporter: str = "torchscript"
    """ONNX exporter for onnxruntime: ``torchscript`` exports in ~2 s where ``dynamo`` takes
    ~30 s per model on 2 shared cores; onnxruntime fuses Conv+BN+ReLU from either graph."""

    def __post_init__(self) -> None:
        check_ratio(self.ratio)
        for name in ("batch", "repeats", "rounds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {self.warmup!r}")
        for name in ("widths", "round_to"):
            values = tuple(getattr(self, name))
            if not values or any(
                isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values
            ):
                raise ValueError(f"{name} must be positive ints, got {values!r}")
        unknown = [r for r in self.runtimes if r not in RUNTIMES]
        if not self.runtimes or unknown:
            raise ValueError(f"runtimes: unknown or none {unknown!r}; choose from {list(RUNTIMES)}")
        if self.exporter not in EXPORTERS:
            raise ValueError(f"exporter must be one of {list(EXPORTERS)}, got {self.exporter!r}")


def _calls(
    config: LatencyScalingConfig, model: nn.Module, x: Tensor, folder: Path, name: str
) -> dict[str, Callable[[], Any]]:
    """``{runtime: () -> one inference of model on x}``."""
    calls: dict[str, Callable[[], Any]] = {}
    if "torch" in config.runtimes:
        calls["torch"] = lambda: model(x)
    if "torch_channels_last" in config.runtimes:
        last = copy.deepcopy(model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x_last = x.contiguous(memory_format=torch.channels_last)
        calls["torch_channels_last"] = lambda: last(x_last)
    if "onnxruntime" in config.runtimes:
        path = folder / f"{name}.onnx"
        export_onnx(model, x[:2], path, exporter=config.exporter)  # type: ignore[arg-type]
        session = ort_session(path)
        feed = {session.get_inputs()[0].name: x.numpy()}
        calls["onnxruntime"] = lambda: session.run(None, feed)
    if "torchscript" in config.runtimes:
        path = folder / f"{name}.pt"
        export_torchscript(model, x[:2], path, freeze=True)
        script = torch.jit.optimize_for_inference(torch.jit.load(str(path)))
        calls["torchscript"] = lambda: script(x)
    return calls


@torch.no_grad()
def _interleaved_ms(
    config: LatencyScalingConfig, calls: dict[str, dict[str, Callable[[], Any]]]
) -> dict[str, dict[str, list[float]]]:
    """``{model: {runtime: [ms per round]}}``: one call of each model in turn, ``repeats`` times a round.

    Contention on a shared CPU only adds time and drifts within seconds: alternating
    single calls gives every model the same share of it, and each round's figure is
    the median of its ``repeats`` calls.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for runtime_calls in calls.values():
            for call in runtime_calls.values():
                for _ in range(config.warmup):
                    call()
        result: dict[str, dict[str, list[float]]] = {
            k: {r: [] for r in c} for k, c in calls.items()
        }
        runtimes = dict.fromkeys(r for c in calls.values() for r in c)
        for _ in range(config.rounds):
            for runtime in runtimes:
                samples: dict[str, list[float]] = {k: [] for k in calls if runtime in calls[k]}
                for _ in range(config.repeats):
                    for key in samples:
                        start = time.perf_counter()
                        calls[key][runtime]()
                        samples[key].append(1000.0 * (time.perf_counter() - start))
                for key, values in samples.items():
                    result[key][runtime].append(statistics.median(values))
    finally:
        torch.set_num_threads(previous)
    return result


def _channels(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def _same_architecture(models: dict[str, nn.Module]) -> dict[str, str]:
    """``{variant: earlier variant}`` for compact variants whose every layer has the same width."""
    shapes = {k: [tuple(p.shape) for p in m.parameters()] for k, m in models.items()}
    same: dict[str, str] = {}
    for index, key in enumerate(models):
        earlier = next((k for k in list(models)[1:index] if shapes[k] == shapes[key]), None)
        if index > 0 and earlier is not None:
            same[key] = same.get(earlier, earlier)
    return same


def run_latency_scaling(
    config: LatencyScalingConfig | None = None, *, seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    """Latency and MACs of dense vs CUT-compact models per width, runtime and ``round_to``."""
    config = LatencyScalingConfig() if config is None else config
    rows = []
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(config.batch, 1, 28, 28, generator=generator)
    data = [
        (x[:16], {t: torch.randint(0, c, (16,), generator=generator) for t, c in TASKS.items()})
    ]
    losses = dict.fromkeys(TASKS, F.cross_entropy)
    bar = tqdm(config.widths, desc="latency scaling", unit="width", disable=not progress)
    with tempfile.TemporaryDirectory(prefix="cut-pam-latency-") as folder:
        for width in bar:
            bar.set_postfix(width=width)
            torch.manual_seed(seed)
            dense = build_model("resnet18", tasks=TASKS, width=width, blocks=[1, 1, 1, 1]).eval()
            models: dict[str, nn.Module] = {"dense": dense}
            for round_to in config.round_to:
                models[f"round_to={round_to}"] = build(
                    {"prune": "cut", "framework": "torch_pruning", "round_to": round_to},
                    model=dense,
                    example_inputs=x[:1],
                    tasks=list(TASKS),
                    losses=losses,
                    data=data,
                    pruning_ratio=config.ratio,
                    progress=False,
                ).eval()
            macs = {k: count_macs(m, x[:1])[0] for k, m in models.items()}
            # a rounding that changes no channel count gives the same architecture: timed once
            same = _same_architecture(models)
            calls = {
                k: _calls(config, m, x, Path(folder), f"w{width}-{k}")
                for k, m in models.items()
                if k not in same
            }
            times = _interleaved_ms(config, calls)
            times.update({k: times[v] for k, v in same.items()})
            ms = {k: {r: statistics.median(v) for r, v in t.items()} for k, t in times.items()}
            variants = {}
            for round_to in config.round_to:
                key = f"round_to={round_to}"
                reduction = macs["dense"] / macs[key]
                variants[str(round_to)] = {
                    "round_to": round_to,
                    "channels": _channels(models[key]),
                    "timed_as": same.get(key, key),
                    "compact_macs": macs[key],
                    "mac_reduction": reduction,
                    "runtimes": {
                        runtime: {
                            "dense_ms": ms["dense"][runtime],
                            "compact_ms": ms[key][runtime],
                            "dense_ms_rounds": times["dense"][runtime],
                            "compact_ms_rounds": times[key][runtime],
                            "speedup": ms["dense"][runtime] / ms[key][runtime],
                            "efficiency": ms["dense"][runtime] / ms[key][runtime] / reduction,
                        }
                        for runtime in ms[key]
                    },
                }
            rows.append(_row(width, macs["dense"], variants))
    return {
        "ratio": config.ratio,
        "batch": config.batch,
        "rounds": config.rounds,
        "round_to": list(config.round_to),
        "rows": rows,
    }


def _row(width: int, dense_macs: int, variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One width: the first variant's figures at the top (PyTorch's as the first release had them)."""
    first = next(iter(variants.values()))
    torch_figures = first["runtimes"].get("torch", {})
    return {
        "width": width,
        "dense_macs": dense_macs,
        **{k: first[k] for k in ("round_to", "channels", "compact_macs", "mac_reduction")},
        **{
            k: torch_figures[k]
            for k in ("dense_ms", "compact_ms", "speedup", "efficiency")
            if k in torch_figures
        },
        "runtimes": first["runtimes"],
        "variants": variants,
    }


def _variant_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per width and ``round_to`` (a results.json of the first release: PyTorch only, no rounding)."""
    result = []
    for r in metrics["rows"]:
        if "variants" not in r:
            runtime = {k: r[k] for k in ("dense_ms", "compact_ms", "speedup", "efficiency")}
            result.append({**r, "round_to": 1, "runtimes": {"torch": runtime}})
            continue
        for variant in r["variants"].values():
            result.append({"width": r["width"], "dense_macs": r["dense_macs"], **variant})
    return result


def render_latency_scaling(metrics: dict[str, Any]) -> str:
    """Markdown table: width, round_to, MACs, per runtime latency and speed-up / MAC reduction."""
    lines = [
        "| width | round_to | MACs dense → compact | MAC reduction | runtime | latency dense → compact (ms) "
        "| speed-up | speed-up / MAC red. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in _variant_rows(metrics):
        for runtime, t in r["runtimes"].items():
            lines.append(
                f"| {r['width']} | {r['round_to']} | {r['dense_macs'] / 1e6:.2f}M → "
                f"{r['compact_macs'] / 1e6:.2f}M | {r['mac_reduction']:.2f}× | {runtime} | "
                f"{t['dense_ms']:.2f} → {t['compact_ms']:.2f} | {t['speedup']:.2f}× | "
                f"{t['efficiency']:.2f} |"
            )
    rounds = metrics.get("rounds", 1)
    return (
        "\n".join(lines)
        + f"\n\nCUT at {metrics['ratio']:.0%} of channels, batch {metrics['batch']}, one CPU thread "
        f"per runtime; median over {rounds} interleaved round(s) of the median of the repeats."
    )


def latency_scaling_summaries(metrics: dict[str, Any]) -> list[str]:
    """One line per runtime and ``round_to``: the efficiency per width; TorchScript's speed-up over eager."""
    rows = _variant_rows(metrics)
    lines = []
    for round_to in dict.fromkeys(r["round_to"] for r in rows):
        for runtime in dict.fromkeys(rt for r in rows for rt in r["runtimes"]):
            parts = ", ".join(
                f"width {r['width']}: {r['runtimes'][runtime]['efficiency']:.2f}"
                for r in rows
                if r["round_to"] == round_to and runtime in r["runtimes"]
            )
            lines.append(
                f"compact latency speed-up / MAC reduction at batch {metrics['batch']}, {runtime}, "
                f"round_to={round_to}: {parts} (goal >= {GOAL})"
            )
        both = [
            r
            for r in rows
            if r["round_to"] == round_to and {"torch", "torchscript"} <= set(r["runtimes"])
        ]
        if both:
            parts = ", ".join(
                f"width {r['width']}: "
                f"{r['runtimes']['torch']['compact_ms'] / r['runtimes']['torchscript']['compact_ms']:.2f}×"
                for r in both
            )
            lines.append(
                f"compact model, frozen + optimised TorchScript against eager PyTorch at batch "
                f"{metrics['batch']}, round_to={round_to}: {parts} faster"
            )
    return lines


def latency_scaling_headline(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """``latency.speedup_per_mac`` per width and runtime (``torch``, ``onnxruntime``, ``torchscript``).

    The headline's compact model is the first ``round_to`` of the config
    (``cut_prune``'s default, 1); the other variants are in the table.
    """
    rows = [
        {**r, "runtimes": r.get("runtimes") or {"torch": r}, "round_to": r.get("round_to", 1)}
        for r in metrics["rows"]
    ]
    return [
        {
            "id": "latency.speedup_per_mac",
            "setting": {
                "width": r["width"],
                "batch": metrics["batch"],
                "runtime": runtime,
                "round_to": r["round_to"],
                "ratio": metrics["ratio"],
            },
            "value": r["runtimes"][runtime]["efficiency"],
            "unit": "latency speed-up / MAC reduction",
            "goal": f">= {GOAL}",
        }
        for r in rows
        for runtime in ("torch", "onnxruntime", "torchscript")
        if runtime in r["runtimes"]
    ]


def _needs(config: LatencyScalingConfig) -> list[Need]:
    if "onnxruntime" not in config.runtimes:
        return []
    needs = [module_need("onnx", "ONNX export"), module_need("onnxruntime", "onnxruntime latency")]
    if config.exporter == "dynamo":
        needs.append(module_need("onnxscript", "the dynamo ONNX exporter"))
    return needs


PART = Part(
    name="latency_scaling",
    title="Latency speed-up against MAC reduction, by width",
    config=LatencyScalingConfig,
    run=run_latency_scaling,
    render=render_latency_scaling,
    summary=latency_scaling_summaries,
    needs=_needs,
    headline=latency_scaling_headline,
)
