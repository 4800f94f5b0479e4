"""Tiny networks for the PAM/MTZ tests, and the tests of how PAM reads architectures (torch.fx).

The factories are imported by the other ``test_pam_*`` files. Every network
is float64 with random weights (and random BatchNorm statistics), so exactness
checks can use tight tolerances.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pam_plugin import parse_architecture

# ---------------------------------------------------------------- factories


def randomize_batchnorm(network: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm random affine parameters and running statistics (not an identity)."""
    generator = torch.Generator().manual_seed(seed)
    for module in network.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            size = module.num_features
            with torch.no_grad():
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)  # type: ignore[union-attr]
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)  # type: ignore[union-attr]
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.1)
    return network


def lenet(classes: int = 3, seed: int = 0) -> nn.Module:
    """LeNet-style on (B, 1, 16, 16): conv-relu-pool ×2, flatten, fc-relu, fc."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, classes),
    ).double().eval()  # fmt: skip


def mlp(classes: int = 3, seed: int = 0) -> nn.Module:
    """MLP on (B, 10) with BatchNorm and Dropout."""
    torch.manual_seed(seed)
    network = nn.Sequential(
        nn.Linear(10, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.1),
        nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, classes),
    )  # fmt: skip
    return randomize_batchnorm(network, seed).double().eval()


class Block(nn.Module):
    """ResNet basic block (conv-BN-ReLU, conv-BN, + shortcut, ReLU)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """Stem, an identity block, a downsampling block, global pooling, fc; on (B, 1, 8, 8)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.layer1 = Block(4, 4, 1)
        self.layer2 = Block(4, 6, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet(classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_batchnorm(TinyResNet(classes), seed).double().eval()


class FunctionalNet(nn.Module):
    """Functional ops: F.relu, F.max_pool2d, x.view(x.size(0), -1), F.dropout, x.relu()."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 5, 3, padding=1)
        self.fc1 = nn.Linear(5 * 4 * 4, 7)
        self.fc2 = nn.Linear(7, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        x = x.view(x.size(0), -1)
        x = F.dropout(self.fc1(x), 0.2, training=self.training).relu()
        return self.fc2(x)


def functional(classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return FunctionalNet(classes).double().eval()


Factory = Callable[..., nn.Module]
FACTORIES: dict[str, tuple[Factory, tuple[int, ...]]] = {
    "lenet": (lenet, (1, 16, 16)),
    "mlp": (mlp, (10,)),
    "resnet": (resnet, (1, 8, 8)),
    "functional": (functional, (2, 8, 8)),
}
"""name → (factory(classes, seed), input shape without the batch)."""


def inputs_for(name: str, count: int = 12, seed: int = 1) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, *FACTORIES[name][1], generator=generator, dtype=torch.float64)


def networks_for(
    name: str, tasks: tuple[str, ...] = ("A", "B"), *, same: bool = False
) -> dict[str, nn.Module]:
    """One network per task; different seeds and class counts unless ``same`` (identical copies)."""
    factory = FACTORIES[name][0]
    return {t: factory(3 if same else 3 + i, 0 if same else i) for i, t in enumerate(tasks)}


def snapshot(networks: dict[str, nn.Module]) -> dict[str, tuple[bool, dict[str, Tensor]]]:
    """Mode and a copy of every tensor of each network, to check nothing was changed."""
    return {
        t: (n.training, {k: v.clone() for k, v in n.state_dict().items()})
        for t, n in networks.items()
    }


def assert_unchanged(
    networks: dict[str, nn.Module], before: dict[str, tuple[bool, dict[str, Tensor]]]
) -> None:
    for task, network in networks.items():
        training, state = before[task]
        assert network.training == training
        current = network.state_dict()
        assert current.keys() == state.keys()
        for key, value in state.items():
            assert torch.allclose(current[key], value, rtol=0, atol=0, equal_nan=True), (
                f"{task}.{key} changed"
            )


# ---------------------------------------------------------------- architecture tests


def test_lenet_spaces_follow_the_layers() -> None:
    arch = parse_architecture(lenet(), inputs_for("lenet"))
    assert [s.name for s in arch.hidden_spaces] == ["0", "3", "7"]
    assert [s.size for s in arch.hidden_spaces] == [4, 6, 16]
    assert [s.layer_type for s in arch.hidden_spaces] == ["conv", "conv", "linear"]
    assert arch.output_space.name == "9" and arch.output_space.size == 3
    flatten_step = arch.step(arch.step(arch.output_space.producers[0]).inputs[0])
    assert arch.factor(arch.space_of(arch.hidden_spaces[2].producers[0]).producers[0]) == 1
    assert flatten_step.kind == "module"


def test_residual_additions_join_spaces() -> None:
    arch = parse_architecture(resnet(), inputs_for("resnet"))
    stage1 = next(s for s in arch.hidden_spaces if s.name == "stem")
    stage2 = next(s for s in arch.hidden_spaces if s.name == "layer2.conv2")
    assert len(stage1.producers) == 2  # stem and layer1.conv2 (identity shortcut)
    assert len(stage2.producers) == 2  # layer2.conv2 and the projection shortcut
    assert len(stage1.recorders) == 2  # the ReLUs after the stem and after layer1's addition
    assert len(stage2.recorders) == 1
    assert len(arch.hidden_spaces) == 4  # two stages and the two blocks' inner spaces


def test_functional_ops_are_read() -> None:
    arch = parse_architecture(functional(), inputs_for("functional"))
    kinds = [step.kind for step in arch.steps]
    assert kinds.count("layer") == 3 and "function" in kinds
    fc1_input = arch.step(next(s.node for s in arch.steps if s.target == "fc1")).inputs[0]
    assert arch.factor(fc1_input) == 16  # a 4x4 map per channel


UNSUPPORTED: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "LayerNorm": (lambda: nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 2)), (4,)),
    "Softmax": (lambda: nn.Sequential(nn.Linear(4, 6), nn.Softmax(dim=1), nn.Linear(6, 2)), (4,)),
    "grouped conv": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 6, 3), nn.Conv2d(6, 6, 3, groups=2), nn.Flatten(), nn.Linear(24, 2)
        ),
        (1, 6, 6),
    ),
}


@pytest.mark.parametrize("named", sorted(UNSUPPORTED))
def test_unsupported_layers_are_named(named: str) -> None:
    build, shape = UNSUPPORTED[named]
    with pytest.raises(TypeError, match=named) as error:
        parse_architecture(build(), torch.randn(2, *shape))
    assert "supported" in str(error.value) and "'1'" in str(error.value)


def test_untraceable_network_is_a_type_error() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(TypeError, match="torch.fx"):
        parse_architecture(Branchy(), torch.randn(2, 3))


def test_parse_leaves_the_network_unchanged() -> None:
    network = mlp()
    network.train()
    before = snapshot({"n": network})
    parse_architecture(network, inputs_for("mlp"))
    assert_unchanged({"n": network}, before)


def test_pam_plugin_imports_without_frameworks() -> None:
    code = (
        "import sys\n"
        "for name in ('torch_pruning', 'nni', 'adapters'):\n"
        "    sys.modules[name] = None\n"
        "import pam_plugin\n"
        "assert 'torch_pruning' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
