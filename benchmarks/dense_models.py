"""The DeepLab-style dense multi-task model of the CUT and DiSparse papers, for the zoo.

``build_model("deeplab", tasks={"seg": 8, "depth": 1, "normal": 3}, in_channels=3)``
(:func:`benchmarks.models.build_model`) builds it through :data:`DENSE_MODELS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.models import BasicBlock, conv_bn, positive

__all__ = [
    "DENSE_MODELS",
    "PAPER_DEEPLAB",
    "ASPPHead",
    "DeepLabMultiTask",
    "build_deeplab",
    "dilated_resnet",
]

PAPER_DEEPLAB = {
    "width": 64,
    "blocks": [3, 4, 6, 3],
    "strides": [1, 2, 1, 1],
    "dilations": [1, 1, 2, 4],
    "stem": "imagenet",
    "rates": [6, 12, 18, 24],
    "head_width": 1024,
}
"""The released code's model: DeepLab ResNet-34 (output stride 8), 1024-wide ASPP branches."""


class ASPPHead(nn.Module):
    """DeepLab-v2's ASPP classifier (as in the CUT/DiSparse code): parallel branches, summed.

    Branch ``r``: 3×3 conv at dilation ``r`` → ReLU → 1×1 conv → ReLU → 1×1 conv
    to ``out_channels``. The released code uses rates 6/12/18/24 and 1024-wide
    branches on a ResNet-34 at output stride 8; the CPU suites use smaller rates
    for their 16×16 feature maps.
    """

    def __init__(
        self, cin: int, out_channels: int, rates: Sequence[int] = (6, 12, 18, 24), hidden: int = 64
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(cin, hidden, 3, padding=rate, dilation=rate),
                nn.ReLU(),
                nn.Conv2d(hidden, hidden, 1),
                nn.ReLU(),
                nn.Conv2d(hidden, out_channels, 1),
            )
            for rate in rates
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class DeepLabMultiTask(nn.Module):
    """A dilated ResNet ``backbone`` and one :class:`ASPPHead` per task; returns ``{task: map}``.

    Every output is bilinearly upsampled to the input's height and width:
    segmentation logits ``(N, classes, H, W)``, depth ``(N, 1, H, W)``, normals
    ``(N, 3, H, W)`` (not normalised; the losses and metrics normalise).
    """

    def __init__(self, backbone: nn.Module, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(dict(heads))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.backbone(x)
        size = x.shape[-2:]
        return {
            task: F.interpolate(head(features), size=size, mode="bilinear", align_corners=False)
            for task, head in self.heads.items()
        }


def dilated_resnet(
    in_channels: int,
    *,
    width: int = 16,
    blocks: Sequence[int] = (1, 1, 1, 1),
    strides: Sequence[int] = (1, 2, 1, 1),
    dilations: Sequence[int] = (1, 1, 2, 4),
    stem: str = "small",
) -> tuple[nn.Module, int, int]:
    """The DeepLab backbone: basic blocks at widths w, 2w, 4w, 8w; later stages dilated, not strided.

    ``stem="imagenet"``: 7×7 stride-2 conv and a max-pool (output stride 8 with
    the released code's strides 1,2,1,1 and dilations 1,1,2,4, as on NYUv2);
    ``stem="small"``: one 3×3 stride-2 conv (output stride 4, for 64-px scenes).
    Returns ``(backbone, channels, output stride)``.
    """
    if len(blocks) != len(strides) or len(blocks) != len(dilations):
        raise ValueError(
            f"blocks {list(blocks)}, strides {list(strides)} and dilations {list(dilations)} "
            "need one entry per stage"
        )
    if stem == "imagenet":
        layers: list[nn.Module] = [conv_bn(in_channels, width, 7, 2), nn.MaxPool2d(3, 2, 1)]
        stride = 4
    elif stem == "small":
        layers = [conv_bn(in_channels, width, 3, 2)]
        stride = 2
    else:
        raise ValueError(f"stem must be 'small' or 'imagenet', got {stem!r}")
    cin = width
    for stage, (count, first, dilation) in enumerate(zip(blocks, strides, dilations, strict=True)):
        cout = width * 2**stage
        for index in range(positive(count, "blocks")):
            layers.append(BasicBlock(cin, cout, first if index == 0 else 1, dilation))
            cin = cout
        stride *= first
    return nn.Sequential(*layers), cin, stride


def build_deeplab(
    tasks: Mapping[str, int],
    *,
    in_channels: int = 3,
    width: int = 16,
    blocks: Sequence[int] = (1, 1, 1, 1),
    strides: Sequence[int] = (1, 2, 1, 1),
    dilations: Sequence[int] = (1, 1, 2, 4),
    stem: str = "small",
    rates: Sequence[int] = (1, 2, 3, 4),
    head_width: int = 32,
) -> DeepLabMultiTask:
    """A :class:`DeepLabMultiTask` with ``tasks={task: output channels}``.

    The CPU suites' default: width 16, one block per stage, small stem, ASPP
    rates 1–4, 32-wide branches. The papers' NYUv2 model (ResNet-34): ``width=64,
    blocks=(3, 4, 6, 3), stem="imagenet", rates=(6, 12, 18, 24), head_width=1024``.
    """
    if not isinstance(tasks, Mapping) or not tasks:
        raise TypeError(f"tasks must be a non-empty mapping {{task: channels}}, got {tasks!r}")
    backbone, channels, _ = dilated_resnet(
        positive(in_channels, "in_channels"),
        width=positive(width, "width"),
        blocks=blocks,
        strides=strides,
        dilations=dilations,
        stem=stem,
    )
    heads = {
        t: ASPPHead(
            channels, positive(c, f"tasks[{t!r}]"), rates, positive(head_width, "head_width")
        )
        for t, c in tasks.items()
    }
    return DeepLabMultiTask(backbone, heads)


DENSE_MODELS: dict[str, Callable[..., nn.Module]] = {"deeplab": build_deeplab}
"""Name → builder ``(tasks, in_channels=, **options) -> model`` of the dense-prediction models."""
