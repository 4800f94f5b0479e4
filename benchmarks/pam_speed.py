"""Speed of PAM: the incremental greedy search against the naive one, and a whole VGG-16 merge.

Run: ``python -m benchmarks.pam_speed [--samples 128] [--size 32] [--seed 0]``.

1. On one layer of two VGG-16 networks (pooled neurons, ``B`` samples), the
   incremental search (distances of the set kept, all candidates scored in one
   batched product) against the naive one (every candidate's distances
   recomputed from its set's activations); both must return the same set.
2. ``PAMMerger().merge`` of two VGG-16-width networks (64 … 512 channels,
   random He-initialised weights, ``size × size`` inputs, random labels).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from adapters.registry import build
from pam_plugin import irrelevant_set

T = TypeVar("T")
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


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


@torch.no_grad()
def layer_features(network: nn.Module, layer: str, x: Tensor) -> Tensor:
    """``(B, C, 1)``: per sample, each channel's largest post-ReLU value at module ``layer``.

    What PAM's search sees for a conv followed by a ReLU (a max over the spatial
    positions; max and ReLU commute), recorded with a forward hook.
    """
    found: list[Tensor] = []
    hook = network.get_submodule(layer).register_forward_hook(
        lambda module, inputs, output: found.append(output)
    )
    try:
        network(x)
    finally:
        hook.remove()
    values = torch.relu(found[0])
    if values.dim() > 2:
        values = values.flatten(2).amax(dim=2)
    return values.float().unsqueeze(-1)


def _timed(function: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def search_speed(features: Tensor, labels: Tensor, alpha: float) -> dict[str, float]:
    """Time both searches on one layer; raise if they disagree."""
    fast, fast_time = _timed(irrelevant_set, features, labels, alpha=alpha)
    naive, naive_time = _timed(irrelevant_set, features, labels, alpha=alpha, incremental=False)
    if fast != naive:
        raise RuntimeError(
            f"the searches disagree: incremental {fast[:8]}..., naive {naive[:8]}..."
        )
    return {
        "steps": len(fast),
        "incremental_s": fast_time,
        "naive_s": naive_time,
        "ratio": naive_time / fast_time,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
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
    parser.add_argument("--alpha-conv", type=float, default=0.01)
    parser.add_argument("--alpha-fc", type=float, default=0.05)
    options = parser.parse_args(argv)
    torch.manual_seed(options.seed)
    x = torch.randn(options.samples, 3, options.size, options.size)
    labels = {t: torch.randint(0, 10, (options.samples,)) for t in ("A", "B")}
    networks = {t: vgg16(10, options.size, options.seed + k) for k, t in enumerate(labels)}

    pooled = torch.cat([layer_features(networks[t], options.layer, x) for t in labels], dim=1)
    search = search_speed(pooled, labels["A"], options.search_alpha)

    merger = build(
        {"merger": "pam", "alpha_conv": options.alpha_conv, "alpha_fc": options.alpha_fc}
    )
    merged, merge_time = _timed(merger.merge, networks, x, labels)
    shared = sum(sizes.get("shared", 0) for sizes in merged.group_sizes().values())
    total = sum(sum(sizes.values()) for sizes in merged.group_sizes().values())

    rows = [
        (f"search, layer {options.layer} ({pooled.shape[1]} neurons, B={options.samples})", "steps", f"{search['steps']:.0f}"),
        ("", "incremental (s)", f"{search['incremental_s']:.3f}"),
        ("", "naive (s)", f"{search['naive_s']:.3f}"),
        ("", "speed-up (goal >= 50x)", f"{search['ratio']:.1f}x"),
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
