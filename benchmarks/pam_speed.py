"""Speed of PAM: the incremental greedy search against the naive one, and a whole VGG-16 merge.

Run: ``python -m benchmarks.pam_speed [--samples 128] [--size 32] [--seed 0] [--repeats 3]``.

1. On one layer of two VGG-16 networks (pooled neurons, ``B`` samples), the
   incremental search (distances of the set kept, all candidates scored in one
   batched product, constant neurons scored once) against the naive one (every
   candidate's distances recomputed from its set's activations); both must
   return the same set. Interleaved repeats: the medians of the times and of
   the per-repeat ratios (``pam.search.speedup``).
2. ``PAMMerger().merge`` of two VGG-16-width networks (64 … 512 channels,
   random He-initialised weights, ``size × size`` inputs, random labels).

The suites' ``pam_speed`` part (:data:`PART`, :class:`PAMSpeedConfig`) runs
the first measurement (``measure_search``) and gives ``results.json`` its
``pam.search.speedup`` entry (``search_headline``): the claim's 2 × 512 neurons
in the full suite, 2 × 32 in the quick one (whose VGG forward pass and naive
search must stay short; the ratio grows with the neurons and steps, so that
entry has no goal).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from adapters.registry import build
from benchmarks.part import Part
from cut_plugin.vocabulary import check_choice, check_int, check_number
from pam_plugin import irrelevant_set

__all__ = [
    "PART",
    "PAMSpeedConfig",
    "layer_features",
    "measure_search",
    "pooled_features",
    "render_pam_speed",
    "run_pam_speed",
    "search_headline",
    "search_speed",
    "vgg16",
]

T = TypeVar("T")
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _conv_widths() -> dict[str, int]:
    widths, index = {}, 0
    for item in VGG16:
        if item != "M":
            widths[str(index)] = int(item)
        index += 1 if item == "M" else 2
    return widths


CONV_WIDTHS = _conv_widths()
"""VGG-16's conv module index in :func:`vgg16` ("0", "2", "5", …, "28") → its channels."""
SPEEDUP_GOAL = ">= 50"
"""The issue's goal, for the claim's setting: all 2 × 512 neurons of the layer, 128 samples."""


def vgg16(classes: int, size: int, seed: int) -> nn.Module:
    """VGG-16 (no BatchNorm) for ``size × size`` RGB inputs, He-initialised like torchvision."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
            channels = int(item)
    side = size // 32
    layers += [
        nn.Flatten(), nn.Linear(512 * side * side, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, classes),
    ]  # fmt: skip
    network = nn.Sequential(*layers)
    for module in network.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return network.eval()


class _Reached(Exception):
    """Raised by the hook: the rest of the forward pass is not needed."""


@torch.no_grad()
def layer_features(network: nn.Module, layer: str, x: Tensor) -> Tensor:
    """``(B, C, 1)``: per sample, each channel's largest post-ReLU value at module ``layer``.

    What PAM's search sees for a conv followed by a ReLU (a max over the spatial
    positions; max and ReLU commute), recorded with a forward hook that also
    stops the forward pass there.
    """
    found: list[Tensor] = []

    def record(module: nn.Module, inputs: Any, output: Tensor) -> None:
        found.append(output)
        raise _Reached

    hook = network.get_submodule(layer).register_forward_hook(record)
    try:
        network(x)
    except _Reached:
        pass
    finally:
        hook.remove()
    values = torch.relu(found[0])
    if values.dim() > 2:
        values = values.flatten(2).amax(dim=2)
    return values.float().unsqueeze(-1)


def pooled_features(
    networks: dict[str, nn.Module], layer: str, x: Tensor, channels: int | None = None
) -> Tensor:
    """``(B, Σ C, 1)``: ``layer_features`` of every network (the first ``channels`` of each).

    The inputs go in ``channels_last`` (the convolutions follow: a faster CPU forward).
    """
    x = x.contiguous(memory_format=torch.channels_last)
    return torch.cat([layer_features(n, layer, x)[:, :channels] for n in networks.values()], dim=1)


def _timed(function: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def search_speed(
    features: Tensor, labels: Tensor, alpha: float, repeats: int = 1
) -> dict[str, Any]:
    """Time both searches on one layer, interleaved ``repeats`` times; raise if they disagree.

    One untimed call of each on a few neurons first (lazy library set-up);
    the times are medians, ``ratio`` the median of the per-repeat ratios.
    """
    for incremental in (True, False):
        irrelevant_set(features[:, :4], labels, alpha=alpha, incremental=incremental)
    fast_times, naive_times, ratios = [], [], []
    for _ in range(repeats):
        fast, fast_time = _timed(irrelevant_set, features, labels, alpha=alpha)
        naive, naive_time = _timed(irrelevant_set, features, labels, alpha=alpha, incremental=False)
        if fast != naive:
            raise RuntimeError(
                f"the searches disagree: incremental {fast[:8]}..., naive {naive[:8]}..."
            )
        fast_times.append(fast_time)
        naive_times.append(naive_time)
        ratios.append(naive_time / fast_time)
    return {
        "steps": len(fast),
        "neurons": features.shape[1],
        "samples": features.shape[0],
        "incremental_s": statistics.median(fast_times),
        "naive_s": statistics.median(naive_times),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "threads": torch.get_num_threads(),
    }


def _setup(
    samples: int, size: int, seed: int
) -> tuple[Tensor, dict[str, Tensor], dict[str, nn.Module]]:
    torch.manual_seed(seed)
    x = torch.randn(samples, 3, size, size)
    labels = {t: torch.randint(0, 10, (samples,)) for t in ("A", "B")}
    networks = {t: vgg16(10, size, seed + k) for k, t in enumerate(labels)}
    return x, labels, networks


def measure_search(
    *, samples: int = 128, channels: int = 512, seed: int = 0, size: int = 32,
    layer: str = "24", alpha: float = 0.01, repeats: int = 3,
) -> dict[str, Any]:  # fmt: skip
    """``search_speed`` on the first ``channels`` channels of layer ``layer`` of each of two VGG-16s.

    Returns the setting (``layer``, ``alpha``, ``size``, ``seed``, ``repeats``)
    with ``search_speed``'s numbers.
    """
    x, labels, networks = _setup(samples, size, seed)
    pooled = pooled_features(networks, layer, x, channels)
    result = search_speed(pooled, labels["A"], alpha, repeats)
    setting = {"layer": layer, "alpha": alpha, "size": size, "seed": seed, "repeats": repeats}
    return {**setting, **result}


def search_headline(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The ``pam.search.speedup`` entry of a ``measure_search`` result (none for ``None``).

    ``goal`` only in the claim's setting (2 × 512 neurons, 128 samples).
    """
    if result is None:
        return []
    claim = result["neurons"] == 2 * 512 and result["samples"] == 128
    setting = {
        "networks": "2 x VGG-16 (He init, random inputs and labels)",
        **{k: result[k] for k in ("layer", "neurons", "samples", "alpha", "steps", "threads")},
        "repeats": result["repeats"], "baseline": "naive greedy search",
    }  # fmt: skip
    return [
        {
            "id": "pam.search.speedup", "setting": setting, "value": round(result["ratio"], 1),
            "unit": "× (naive ÷ incremental search time)", "baseline": "naive",
            "goal": SPEEDUP_GOAL if claim else None,
        }
    ]  # fmt: skip


@dataclass(frozen=True)
class PAMSpeedConfig:
    """The search comparison of a suite (:func:`measure_search`).

    ``channels`` of each of the two networks' layer ``layer`` (all 512 of
    conv5_1, module "24", in the claim; fewer keep the quick suite quick);
    ``samples`` inputs; ``repeats`` interleaved repeats; ``threads`` torch
    threads while measuring (``None``: as they are; restored after).
    """

    samples: int = 128
    channels: int = 512
    layer: str = "24"
    alpha: float = 0.01
    repeats: int = 3
    threads: int | None = 1

    def __post_init__(self) -> None:
        check_int("samples", self.samples, low=2)
        check_choice("layer", self.layer, tuple(CONV_WIDTHS))
        check_int("channels", self.channels)
        if self.channels > CONV_WIDTHS[self.layer]:
            raise ValueError(
                f"channels must be <= {CONV_WIDTHS[self.layer]} (layer {self.layer}'s width), "
                f"got {self.channels}"
            )
        check_number("alpha", self.alpha, low=0.0)
        check_int("repeats", self.repeats)
        if self.threads is not None:
            check_int("threads", self.threads)


def run_pam_speed(
    config: PAMSpeedConfig, *, seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    """``measure_search`` in ``config``'s setting: ``{"config": ..., **numbers}``."""
    if not isinstance(config, PAMSpeedConfig):
        raise TypeError(f"config must be a PAMSpeedConfig, got {type(config).__name__}")
    previous = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        result = measure_search(
            samples=config.samples, channels=config.channels, seed=seed, layer=config.layer,
            alpha=config.alpha, repeats=config.repeats,
        )  # fmt: skip
    finally:
        torch.set_num_threads(previous)
    return {"config": asdict(config), **result}


def render_pam_speed(metrics: dict[str, Any]) -> str:
    """Markdown: the setting, both median times and the speed-up."""
    rows = [
        ("layer", f"{metrics['layer']} of 2 × VGG-16 ({metrics['neurons']} neurons pooled)"),
        ("samples", str(metrics["samples"])),
        ("neurons taken (α = " + f"{metrics['alpha']:g})", str(metrics["steps"])),
        ("incremental search (s, median)", f"{metrics['incremental_s']:.3f}"),
        ("naive search (s, median)", f"{metrics['naive_s']:.3f}"),
        ("speed-up (median of interleaved repeats)", f"{metrics['ratio']:.1f}×"),
        ("threads / repeats", f"{metrics['threads']} / {metrics['repeats']}"),
    ]
    lines = ["| quantity | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    note = "Both searches return the same neurons in the same order."
    if not search_headline(metrics)[0]["goal"]:
        note += " A reduced setting: the goal (≥ 50×) is for all 2 × 512 neurons, 128 samples."
    return "\n".join([*lines, "", note])


def pam_speed_summaries(metrics: dict[str, Any]) -> list[str]:
    """The speed-up in one line."""
    return [
        f"PAM greedy search: incremental {metrics['ratio']:.1f}× faster than naive "
        f"({metrics['neurons']} neurons, {metrics['samples']} samples)"
    ]


PART = Part(
    name="pam_speed",
    title="PAM: the incremental greedy search against the naive one",
    config=PAMSpeedConfig,
    run=run_pam_speed,
    render=render_pam_speed,
    summary=pam_speed_summaries,
    headline=search_headline,
)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run both measurements, print a table, return the numbers."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pam_speed", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--samples", type=int, default=128, help="inputs used by PAM (the paper: 128)"
    )
    parser.add_argument("--size", type=int, default=32, help="input side (a multiple of 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--layer", default="24", help="layer of the search comparison (VGG module index)"
    )
    parser.add_argument(
        "--search-alpha", type=float, default=0.01, help="alpha of the search comparison"
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved search repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as is)")
    parser.add_argument("--no-merge", action="store_true", help="only the search comparison")
    parser.add_argument("--alpha-conv", type=float, default=0.01)
    parser.add_argument("--alpha-fc", type=float, default=0.05)
    options = parser.parse_args(argv)
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    x, labels, networks = _setup(options.samples, options.size, options.seed)
    pooled = pooled_features(networks, options.layer, x)
    search = search_speed(pooled, labels["A"], options.search_alpha, options.repeats)

    rows = [
        (f"search, layer {options.layer} ({pooled.shape[1]} neurons, B={options.samples})", "steps", f"{search['steps']:.0f}"),
        ("", "incremental (s, median)", f"{search['incremental_s']:.3f}"),
        ("", "naive (s, median)", f"{search['naive_s']:.3f}"),
        ("", "speed-up (goal >= 50x)", f"{search['ratio']:.1f}x (" + ", ".join(f"{r:.1f}" for r in search["ratios"]) + ")"),
    ]  # fmt: skip
    merge_time = None
    if not options.no_merge:
        merger = build(
            {"merger": "pam", "alpha_conv": options.alpha_conv, "alpha_fc": options.alpha_fc}
        )
        merged, merge_time = _timed(merger.merge, networks, x, labels)
        shared = sum(sizes.get("shared", 0) for sizes in merged.group_sizes().values())
        total = sum(sum(sizes.values()) for sizes in merged.group_sizes().values())
        rows += [
            (f"PAM merge, 2 x VGG-16 on {options.samples} x 3x{options.size}x{options.size}", "time (s, goal < 60)", f"{merge_time:.2f}"),
            ("", "shared / all neurons kept", f"{shared} / {total}"),
        ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'quantity':<24}  value")
    for label, quantity, value in rows:
        print(f"{label:<{width}}  {quantity:<24}  {value}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    return {**search, "merge_s": merge_time}


if __name__ == "__main__":
    main()
