"""Model zoo: LeNet-5, VGG-, ResNet-18- and MobileNetV2-style CNNs, an MLP, and a DeepLab-style dense net.

Every model is a ``trunk`` (shared features, ending in a flat vector) plus
either one ``head`` (:class:`SingleTaskNet`, returns a Tensor) or a
``heads`` ``nn.ModuleDict`` (:class:`MultiTaskNet`, returns ``{task: Tensor}``).
Only standard layers, no in-place ops and no data-dependent control flow, so
every model traces with ``torch.fx`` and prunes with Torch-Pruning. Sized for
28×28 inputs (any size ≥ 8×8 works; the CNNs end in global average pooling).

``deeplab`` is the dense-prediction model of the CUT and DiSparse papers
(:class:`benchmarks.dense_models.DeepLabMultiTask`): a dilated ResNet backbone and one ASPP head per
task, each output upsampled to the input size; ``tasks={task: output channels}``
(e.g. ``{"seg": 8, "depth": 1, "normal": 3}``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn


class SingleTaskNet(nn.Module):
    """``head(trunk(x))``: one task, returns the logits Tensor."""

    def __init__(self, trunk: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk(x))


class MultiTaskNet(nn.Module):
    """A shared ``trunk`` and one head per task in ``heads``; returns ``{task: logits}``."""

    def __init__(self, trunk: nn.Module, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleDict(dict(heads))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.trunk(x)
        return {task: head(features) for task, head in self.heads.items()}


def conv_bn(
    cin: int,
    cout: int,
    kernel: int = 3,
    stride: int = 1,
    groups: int = 1,
    act: bool = True,
    dilation: int = 1,
) -> nn.Sequential:
    """Conv (no bias; ``dilation`` keeps the map's size) → BatchNorm → ReLU (optional)."""
    padding = dilation * (kernel // 2)
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, padding, dilation, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 conv-BN, a projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride, dilation=dilation)
        self.conv2 = conv_bn(cout, cout, 3, 1, act=False, dilation=dilation)
        self.shortcut = (
            conv_bn(cin, cout, 1, stride, act=False)
            if stride != 1 or cin != cout
            else nn.Identity()
        )
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expand → 3×3 depthwise → 1×1 linear project (+ skip if same shape)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [conv_bn(cin, hidden, 1)] if expand != 1 else []
        layers += [
            conv_bn(hidden, hidden, 3, stride, groups=hidden),
            conv_bn(hidden, cout, 1, act=False),
        ]
        self.block = nn.Sequential(*layers)
        self.use_skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.use_skip else out


def _pool_flatten() -> list[nn.Module]:
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten()]


def lenet5_trunk(
    in_channels: int, input_size: tuple[int, int], width: int = 6
) -> tuple[nn.Module, int]:
    """LeNet-5 (padded 5×5 convs of ``width`` and ``width·8/3`` channels, FC 120 → 84)."""
    c1, c2 = width, max(1, round(width * 16 / 6))
    convs = nn.Sequential(
        nn.Conv2d(in_channels, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
    )  # fmt: skip
    with torch.no_grad():
        flat = convs(torch.zeros(1, in_channels, *input_size)).shape[1]
    trunk = nn.Sequential(*convs, nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
    return trunk, 84


def vgg_trunk(
    in_channels: int, input_size: tuple[int, int], width: int = 16, depth: int = 2, stages: int = 3
) -> tuple[nn.Module, int]:
    """VGG-style: ``stages`` stages of ``depth`` 3×3 conv-BN-ReLU (width doubling), max-pool between."""
    layers: list[nn.Module] = []
    cin = in_channels
    for stage in range(stages):
        cout = width * 2**stage
        for _ in range(depth):
            layers.append(conv_bn(cin, cout))
            cin = cout
        if stage < stages - 1:
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, *_pool_flatten()), cin


def resnet18_trunk(
    in_channels: int,
    input_size: tuple[int, int],
    width: int = 16,
    blocks: Sequence[int] = (2, 2, 2, 2),
) -> tuple[nn.Module, int]:
    """ResNet-18-style: 3×3 stem (no max-pool, for 28×28), basic blocks at widths w, 2w, 4w, 8w."""
    layers: list[nn.Module] = [conv_bn(in_channels, width)]
    cin = width
    for stage, count in enumerate(blocks):
        cout = width * 2**stage
        for index in range(count):
            layers.append(BasicBlock(cin, cout, 2 if stage > 0 and index == 0 else 1))
            cin = cout
    return nn.Sequential(*layers, *_pool_flatten()), cin


MOBILENET_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2))
"""(expansion, channels, blocks, first stride) per stage; ``width`` scales the channels (÷16)."""


def mobilenetv2_trunk(
    in_channels: int, input_size: tuple[int, int], width: int = 16, last_channels: int = 128
) -> tuple[nn.Module, int]:
    """MobileNetV2-style: 3×3 stem, inverted residuals with depthwise convs, 1×1 to ``last_channels``."""
    layers: list[nn.Module] = [conv_bn(in_channels, width)]
    cin = width
    for expand, channels, count, stride in MOBILENET_SETTINGS:
        cout = max(4, channels * width // 16)
        for index in range(count):
            layers.append(InvertedResidual(cin, cout, stride if index == 0 else 1, expand))
            cin = cout
    layers.append(conv_bn(cin, last_channels, 1))
    return nn.Sequential(*layers, *_pool_flatten()), last_channels


def mlp_trunk(
    in_channels: int, input_size: tuple[int, ...], width: int = 128, depth: int = 2
) -> tuple[nn.Module, int]:
    """MLP on the flattened input (any input shape, e.g. MNIST-1D's ``(1, 40)``)."""
    features = in_channels
    for side in input_size:
        features *= side
    layers: list[nn.Module] = [nn.Flatten()]
    for _ in range(depth):
        layers += [nn.Linear(features, width), nn.ReLU()]
        features = width
    return nn.Sequential(*layers), features


MODELS: dict[str, Callable[..., tuple[nn.Module, int]]] = {
    "lenet5": lenet5_trunk,
    "vgg": vgg_trunk,
    "resnet18": resnet18_trunk,
    "mobilenetv2": mobilenetv2_trunk,
    "mlp": mlp_trunk,
}
"""Name → trunk builder ``(in_channels, input_size, **options) -> (trunk, feature_width)``."""


def make_head(features: int, num_classes: int, layers: int = 1, hidden: int = 64) -> nn.Module:
    """A task head: ``layers`` Linear layers (ReLU between, ``hidden`` wide) ending in ``num_classes``."""
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"head layers must be a positive int, got {layers!r}")
    modules: list[nn.Module] = []
    for _ in range(layers - 1):
        modules += [nn.Linear(features, hidden), nn.ReLU()]
        features = hidden
    modules.append(nn.Linear(features, num_classes))
    return modules[0] if layers == 1 else nn.Sequential(*modules)


def positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def build_model(
    name: str,
    *,
    tasks: Mapping[str, int] | None = None,
    num_classes: int | None = None,
    in_channels: int = 1,
    input_size: int | Sequence[int] = 28,
    head_layers: int | Mapping[str, int] = 1,
    head_hidden: int = 64,
    **options: Any,
) -> nn.Module:
    """Build a model of the zoo: multi-task with ``tasks={task: classes}``, else ``num_classes``.

    ``options`` go to the trunk builder (``width``, ``depth``, ``stages``,
    ``blocks``, ``last_channels``; see ``MODELS``). ``head_layers`` may differ
    per task (``{"digit": 2, "parity": 1}``); ``input_size`` is ``H`` or ``(H, W)``
    (or ``(L,)`` for the MLP).
    """
    from benchmarks.dense_models import DENSE_MODELS

    if name in DENSE_MODELS:
        if tasks is None:
            raise TypeError(
                f"model {name!r} is multi-task only: give tasks={{task: output channels}}"
            )
        if head_layers != 1 or head_hidden != 64:
            raise TypeError(f"model {name!r} takes head_width, not head_layers/head_hidden")
        try:
            return DENSE_MODELS[name](tasks, in_channels=in_channels, **options)
        except TypeError as error:
            raise TypeError(
                f"bad option for model {name!r}: {error}; options given: {sorted(options)}"
            ) from error
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted([*MODELS, *DENSE_MODELS])}")
    if (tasks is None) == (num_classes is None):
        raise TypeError(f"give exactly one of tasks={tasks!r} or num_classes={num_classes!r}")
    positive(in_channels, "in_channels")
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if name != "mlp" and len(size) != 2:
        raise ValueError(f"input_size must be H or (H, W) for {name!r}, got {input_size!r}")
    for side in size:
        positive(side, "input_size")
    try:
        trunk, features = MODELS[name](in_channels, size, **options)
    except TypeError as error:
        raise TypeError(
            f"bad option for model {name!r}: {error}; options given: {sorted(options)}"
        ) from error
    except RuntimeError as error:
        raise ValueError(f"input_size {size} is too small for model {name!r}: {error}") from error
    if num_classes is not None:
        if not isinstance(head_layers, int):
            raise TypeError(
                f"head_layers must be an int for a single-task model, got {head_layers!r}"
            )
        depth = head_layers
        return SingleTaskNet(
            trunk, make_head(features, positive(num_classes, "num_classes"), depth, head_hidden)
        )
    if not isinstance(tasks, Mapping) or not tasks:
        raise TypeError(f"tasks must be a non-empty mapping {{task: num_classes}}, got {tasks!r}")
    depths = (
        dict.fromkeys(tasks, head_layers) if isinstance(head_layers, int) else dict(head_layers)
    )
    missing = [t for t in tasks if t not in depths]
    if missing:
        raise ValueError(f"head_layers has no entry for task(s) {missing}; tasks are {list(tasks)}")
    heads = {
        t: make_head(features, positive(c, f"tasks[{t!r}]"), depths[t], head_hidden)
        for t, c in tasks.items()
    }
    return MultiTaskNet(trunk, heads)
