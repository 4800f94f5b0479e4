"""Small multi-task models for the tests: dict and tuple outputs, residual adds, concats,
BatchNorm, two-layer heads and a segmentation-style head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Block(nn.Module):
    """A residual basic block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


def pooled_head(width: int, classes: int, hidden: int | None = None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if hidden is None:
        layers.append(nn.Linear(width, classes))
    else:
        layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, classes)]
    return nn.Sequential(*layers)


class ResidualNet(nn.Module):
    """Residual trunk + heads a (3 classes), b (two-layer, 2 classes), seg (conv + upsample, 4 classes)."""

    tasks = ("a", "b", "seg")

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            Block(width),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            Block(2 * width),
        )
        self.heads = nn.ModuleDict(
            {
                "a": pooled_head(2 * width, 3),
                "b": pooled_head(2 * width, 2, hidden=8),
                "seg": nn.Sequential(nn.Conv2d(2 * width, 4, 1), nn.Upsample(scale_factor=2)),
            }
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.trunk(x)
        return {name: head(features) for name, head in self.heads.items()}


class ConcatNet(nn.Module):
    """Two branches concatenated, then heads; returns a tuple (needs task_names)."""

    tasks = ("left", "right")

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.branch1 = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.ReLU())
        self.branch2 = nn.Sequential(nn.Conv2d(8, 10, 1), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(16, 12, 3, padding=1), nn.ReLU())
        self.heads = nn.ModuleDict(
            {"left": pooled_head(12, 5), "right": pooled_head(12, 3, hidden=6)}
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s = self.stem(x)
        features = self.mix(torch.cat([self.branch1(s), self.branch2(s)], dim=1))
        return self.heads["left"](features), self.heads["right"](features)


class MLPNet(nn.Module):
    """Linear trunk with two heads, dict output."""

    tasks = ("p", "q")

    def __init__(self, inputs: int = 12) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(inputs, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU())
        self.heads = nn.ModuleDict({"p": nn.Linear(16, 4), "q": nn.Linear(16, 3)})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.trunk(x)
        return {"p": self.heads["p"](h), "q": self.heads["q"](h)}


class Untraceable(MLPNet):
    """Data-dependent control flow: torch.fx cannot trace it; heads in a ModuleDict."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.trunk(x)
        if h.sum() > 0:  # data-dependent
            h = h * 1.0
        return {name: head(h) for name, head in self.heads.items()}


class UntraceableNoHeads(nn.Module):
    """Untraceable and without a `heads` ModuleDict."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.p = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.body(x)
        if h.sum() > 0:
            h = h + 1
        return {"p": self.p(h), "q": h}


def example_input(model: nn.Module, batch: int = 4, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    if isinstance(model, MLPNet):
        return torch.randn(batch, 12, generator=generator)
    return torch.randn(batch, 1, 16, 16, generator=generator)


def make_batches(model: nn.Module, count: int = 2, batch: int = 6, seed: int = 0) -> list:
    """(inputs, {task: target}) batches with random class targets for every task of ``model``."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    with torch.no_grad():
        for i in range(count):
            x = example_input(model, batch, seed + i)
            out = model.eval()(x)
            if isinstance(out, tuple):
                out = dict(zip(model.tasks, out, strict=True))
            targets = {}
            for task, value in out.items():
                classes = value.shape[1]
                shape = (value.shape[0], *value.shape[2:])
                targets[task] = torch.randint(0, classes, shape, generator=generator)
            batches.append((x, targets))
    return batches


def losses_for(model: nn.Module) -> dict:
    return {task: F.cross_entropy for task in model.tasks}


def init_nontrivial(model: nn.Module, seed: int = 0) -> nn.Module:
    """Randomise BatchNorm statistics and affine parameters so BN is not an identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
    return model.eval()


def state_snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model: nn.Module, snapshot: dict[str, Tensor]) -> bool:
    state = model.state_dict()
    return state.keys() == snapshot.keys() and all(
        torch.equal(state[k], snapshot[k]) for k in state
    )
