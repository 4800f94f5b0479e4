"""Random multi-task architectures from a small grammar, for the property tests.

trunk  := block+                      (on a (N, 3, 8, 8) input)
block  := conv | residual | concat | depthwise | split
conv   := Conv2d(k ∈ {1, 3}) [BatchNorm2d] ReLU (in place when the spec says so: h.relu_())
residual := conv-BN-ReLU-conv-BN, added to its input, ReLU
concat := two conv branches, concatenated on channels
depthwise := depthwise 3×3 conv + BN + ReLU, then a 1×1 conv
split  := a conv whose output is torch.split by sizes read from layer attributes
          (self.left.in_channels, ...), two convs, concatenated
heads  := 1–4 heads, each pooled → 1–3 Linear layers, or a 1×1 conv + upsample (dense output)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import Tensor, nn


@dataclass(frozen=True)
class Spec:
    """A drawn architecture: trunk blocks and heads."""

    blocks: tuple[tuple[str, int, bool], ...]  # (kind, width, batchnorm)
    heads: tuple[tuple[str, int, int], ...]  # (kind "linear"/"dense", depth, classes)
    seed: int
    inplace: bool = False  # ConvBlock's ReLU in place (h.relu_(), result not reassigned)


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, bn: bool, inplace: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=not bn)
        self.bn = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn(self.conv(x))
        if self.inplace:
            h.relu_()
            return h
        return F.relu(h)


class SplitBlock(nn.Module):
    """Split sizes read from layer attributes: frozen by a trace, re-read by this forward."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        half = max(1, cout // 2)
        self.conv = nn.Conv2d(cin, cout, 1)
        self.left = nn.Conv2d(half, half, 3, padding=1)
        self.right = nn.Conv2d(cout - half, cout - half, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv(x))
        p, q = torch.split(h, [self.left.in_channels, self.right.in_channels], dim=1)
        return torch.cat([F.relu(self.left(p)), F.relu(self.right(q))], dim=1)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a = ConvBlock(channels, channels, 3, True)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.bn(self.conv(self.a(x))))


class ConcatBlock(nn.Module):
    def __init__(self, cin: int, cout: int, bn: bool) -> None:
        super().__init__()
        half = max(1, cout // 2)
        self.left = ConvBlock(cin, half, 3, bn)
        self.right = ConvBlock(cin, cout - half, 1, bn)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.left(x), self.right(x)], dim=1)


class DepthwiseBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.bn = nn.BatchNorm2d(cin)
        self.pointwise = nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.pointwise(F.relu(self.bn(self.depthwise(x)))))


def _head(kind: str, depth: int, features: int, classes: int) -> nn.Module:
    if kind == "dense":
        return nn.Sequential(nn.Conv2d(features, classes, 1), nn.Upsample(scale_factor=2))
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    width = features
    for i in range(depth - 1):
        layers += [nn.Linear(width, 6 + i), nn.ReLU()]
        width = 6 + i
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


class RandomNet(nn.Module):
    """A multi-task net built from a :class:`Spec`; forward returns ``{"t0": ..., ...}``."""

    def __init__(self, spec: Spec) -> None:
        super().__init__()
        torch.manual_seed(spec.seed)
        blocks: list[nn.Module] = []
        channels = 3
        for kind, width, bn in spec.blocks:
            if kind == "conv":
                blocks.append(ConvBlock(channels, width, 3, bn, spec.inplace))
                channels = width
            elif kind == "split":
                blocks.append(SplitBlock(channels, width))
                channels = width
            elif kind == "residual":
                if channels == 3:
                    blocks.append(ConvBlock(channels, width, 1, bn))
                    channels = width
                blocks.append(ResidualBlock(channels))
            elif kind == "concat":
                blocks.append(ConcatBlock(channels, width, bn))
                channels = width
            else:
                blocks.append(DepthwiseBlock(channels, width))
                channels = width
        self.trunk = nn.Sequential(*blocks)
        self.heads = nn.ModuleDict(
            {
                f"t{i}": _head(kind, depth, channels, classes)
                for i, (kind, depth, classes) in enumerate(spec.heads)
            }
        )
        with torch.no_grad():  # BatchNorm that is not an identity
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.1, 0.1)
        self.eval()
        self.explicit = False  # True: the forward names the heads (select_tasks must trace it)
        self.names = list(self.heads.keys())

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.trunk(x)
        if self.explicit:
            return {name: self.heads[name](features) for name in self.names}
        return {name: head(features) for name, head in self.heads.items()}


BLOCK = st.tuples(
    # No "split": once pruning makes SplitBlock's halves uneven, Torch-Pruning 1.6.1
    # mis-indexes the split's consumers (tests/test_real_models.py covers split models).
    st.sampled_from(["conv", "residual", "concat", "depthwise"]),
    st.integers(4, 12),
    st.booleans(),
)
HEAD = st.tuples(
    st.sampled_from(["linear", "linear", "dense"]), st.integers(1, 3), st.integers(2, 5)
)
SPECS = st.builds(
    Spec,
    blocks=st.lists(BLOCK, min_size=1, max_size=4).map(tuple),
    heads=st.lists(HEAD, min_size=1, max_size=4).map(tuple),
    seed=st.integers(0, 10_000),
    inplace=st.booleans(),
)


def batches_for(model: RandomNet, count: int = 1, size: int = 4, seed: int = 0) -> list:
    """``(x, {task: target})`` with class targets of the right shape for every head."""
    g = torch.Generator().manual_seed(seed)
    result = []
    for _ in range(count):
        x = torch.randn(size, 3, 8, 8, generator=g)
        with torch.no_grad():
            out = model(x)
        targets = {
            t: torch.randint(0, v.shape[1], (v.shape[0], *v.shape[2:]), generator=g)
            for t, v in out.items()
        }
        result.append((x, targets))
    return result


def cross_entropy_losses(model: RandomNet) -> dict:
    return dict.fromkeys(model.heads.keys(), F.cross_entropy)
