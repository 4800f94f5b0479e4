"""Random multi-task architectures from a small grammar, for the property tests.

trunk  := block+                      (on a (N, 3, 8, 8) input)
block  := conv | residual | concat | depthwise            (SPECS: ReLU or h.relu_())
        | view | attention | mha | split                  (also in ALL_SPECS)
conv   := Conv2d(k ∈ {1, 3}) [BatchNorm2d] activation, in one of the forms users write
          (ACTS: F.relu, h.relu_(), F.relu(h, inplace=True), nn.ReLU(inplace=True),
          x.mul_(0.5) then ReLU, h.clamp_(max=6) then ReLU; in-place results not reassigned)
residual := conv-BN-ReLU-conv-BN, added to its input, ReLU
concat := two conv branches, concatenated on channels
depthwise := depthwise 3×3 conv + BN + ReLU, then a 1×1 conv
view   := a conv whose output is viewed by sizes read from layer attributes
          (h.view(-1, self.conv.out_channels, ...)), activated in place, viewed back
attention := 1×1 conv to 8 channels, tokens, + Hugging Face-style self-attention (2 heads of
          4: query/key/value, num_attention_heads, attention_head_size, all_head_size read
          by its forward), back to a map, 1×1 conv
mha    := the same with nn.MultiheadAttention(8, 2) (protected by the library)
split  := a conv whose output is torch.split by sizes read from layer attributes
          (self.left.in_channels, ...) into equal halves, two convs, concatenated; once
          pruning makes the halves uneven Torch-Pruning 1.6.1 mis-indexes the consumers,
          which the library turns into a clear RuntimeError
heads  := 1–4 heads in an nn.ModuleDict, each pooled → 1–3 Linear layers, or a 1×1 conv +
          upsample (dense output); iterated in forward, or named explicitly
          (``model.explicit = True``: select_tasks traces it)
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
    act: str = "relu"  # ConvBlock's activation form (ACTS); inplace=True means "relu_"


ACTS = ("relu", "relu_", "functional", "module", "mul_", "clamp_")
ATTRIBUTE_SIZED = ("view", "attention", "split")  # forwards that read sizes from attributes


class ConvBlock(nn.Module):
    def __init__(
        self, cin: int, cout: int, kernel: int, bn: bool, inplace: bool = False, act: str = "relu"
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=not bn)
        self.bn = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.act = "relu_" if inplace else act
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn(self.conv(x))
        act = self.act
        if act == "relu_":
            h.relu_()
        elif act == "functional":
            F.relu(h, inplace=True)
        elif act == "module":
            self.relu(h)
        elif act == "mul_":
            h.mul_(0.5)
            h = F.relu(h)
        elif act == "clamp_":
            h.clamp_(max=6)
            h = F.relu(h)
        else:
            h = F.relu(h)
        return h


class ViewBlock(nn.Module):
    """A view sized from a layer attribute: frozen by a trace, re-read by this forward."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        size = h.shape[2:]
        flat = h.view(-1, self.conv.out_channels, size[0] * size[1])
        flat.relu_()
        return flat.view(-1, self.conv.out_channels, size[0], size[1])


class HFSelfAttention(nn.Module):
    """Hugging Face-style self-attention (BERT's names), head counts read by the forward."""

    def __init__(self, width: int, heads: int = 2, size: int = 4) -> None:
        super().__init__()
        self.num_attention_heads = heads
        self.attention_head_size = size
        self.all_head_size = heads * size
        self.query = nn.Linear(width, heads * size)
        self.key = nn.Linear(width, heads * size)
        self.value = nn.Linear(width, heads * size)
        self.output = nn.Linear(heads * size, width)

    def forward(self, tokens: Tensor) -> Tensor:
        n, t, _ = tokens.shape
        shape = (n, t, self.num_attention_heads, self.attention_head_size)
        q, k, v = (
            p(tokens).view(shape).transpose(1, 2) for p in (self.query, self.key, self.value)
        )
        weights = torch.softmax(q @ k.transpose(-1, -2) / self.attention_head_size**0.5, dim=-1)
        return self.output((weights @ v).transpose(1, 2).reshape(n, t, self.all_head_size))


class AttentionBlock(nn.Module):
    """A 1×1 conv to 8 channels, self-attention over the positions with a residual, a 1×1 conv."""

    def __init__(self, cin: int, cout: int, kind: str) -> None:
        super().__init__()
        self.inp = nn.Conv2d(cin, 8, 1)
        self.attn: nn.Module = (
            HFSelfAttention(8)
            if kind == "attention"
            else nn.MultiheadAttention(8, 2, batch_first=True)
        )
        self.out = nn.Conv2d(8, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        tokens = h.flatten(2).transpose(1, 2)
        if isinstance(self.attn, nn.MultiheadAttention):
            tokens = tokens + self.attn(tokens, tokens, tokens, need_weights=False)[0]
        else:
            tokens = tokens + self.attn(tokens)
        return F.relu(self.out(tokens.transpose(1, 2).reshape(h.shape)))


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
                blocks.append(ConvBlock(channels, width, 3, bn, spec.inplace, spec.act))
                channels = width
            elif kind == "view":
                blocks.append(ViewBlock(channels, width))
                channels = width
            elif kind in ("attention", "mha"):
                blocks.append(AttentionBlock(channels, width, kind))
                channels = width
            elif kind == "split":
                blocks.append(SplitBlock(channels, width + width % 2))  # equal halves
                width += width % 2
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
)  # unchanged draws (test_monotone, test_global_pruning); ALL_SPECS draws every form
# Every block kind; an attribute-sized, attention or split block is always drawn.
ALL_BLOCK = st.tuples(
    st.sampled_from(["conv", "residual", "concat", "depthwise", *ATTRIBUTE_SIZED, "mha"]),
    st.integers(4, 12),
    st.booleans(),
)
SPECIAL = st.tuples(st.sampled_from([*ATTRIBUTE_SIZED, "mha"]), st.integers(4, 12), st.booleans())
ALL_SPECS = st.builds(
    Spec,
    blocks=st.tuples(st.lists(ALL_BLOCK, max_size=2), SPECIAL, st.lists(ALL_BLOCK, max_size=1)).map(
        lambda parts: (*parts[0], parts[1], *parts[2])
    ),
    heads=st.lists(HEAD, min_size=1, max_size=3).map(tuple),
    seed=st.integers(0, 10_000),
    act=st.sampled_from(ACTS),
)


def kinds(spec: Spec) -> set[str]:
    """The block kinds of ``spec``."""
    return {kind for kind, _, _ in spec.blocks}


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
