"""Models as users write them: in-place ops, sizes read from layer attributes, heads
containers, compiled and wrapped models, bad save files. Every transform checks itself."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

import adapters.torch_pruning as atp
from cut_plugin import export_torchscript, select_tasks
from cut_plugin.checks import TransformCheckError
from tests.toy_models import (
    ResidualNet,
    example_input,
    init_nontrivial,
    losses_for,
    make_batches,
    same_state,
    state_snapshot,
)


def _head(width: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))


class InplaceNet(nn.Module):
    """A trunk with one in-place form; head b has its own in-place ReLU; heads named explicitly
    (so select_tasks traces it)."""

    def __init__(self, form: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.form = form
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        acts = {"hardswish": nn.Hardswish, "silu": nn.SiLU, "relu6": nn.ReLU6}
        self.act = acts.get(form, nn.ReLU)(inplace=True)
        self.leaky = nn.LeakyReLU(0.1, inplace=True)
        self.drop = nn.Dropout(0.5, inplace=True)
        self.register_buffer("mean", torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1))
        self.heads = nn.ModuleDict(
            {
                "a": _head(8, 3),
                "b": nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 1)),
            }
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        form = self.form
        if form == "normalise":
            x.sub_(self.mean).div_(self.std)  # on the input itself
        h = self.conv(x)
        if form == "relu_":
            h.relu_()
        elif form == "functional":
            F.relu(h, inplace=True)
        elif form in ("module", "hardswish", "silu", "relu6"):
            self.act(h)
        elif form == "leaky":
            self.leaky(h)
        elif form == "dropout":
            self.drop(h)
        elif form == "clamp_":
            h.clamp_(max=0.1)
        elif form == "mul_":
            h.mul_(0.5)
        elif form == "view":
            h.view(h.shape[0], -1).relu_()  # through a view of h
        h = self.conv2(h)
        return {"a": self.heads["a"](h), "b": self.heads["b"](h)}


FORMS = ["relu_", "functional", "module", "hardswish", "silu", "relu6", "leaky", "dropout",
         "normalise", "clamp_", "mul_", "view"]  # fmt: skip


@pytest.mark.parametrize("form", FORMS)
def test_inplace_ops_survive_select_tasks_and_ratio_zero(form):
    model = InplaceNet(form).eval()
    snapshot = state_snapshot(model)
    x = torch.randn(4, 3, 8, 8)
    reference = model(x.clone())["a"]
    selected = select_tasks(model, ["a"])
    assert isinstance(selected, fx.GraphModule)  # heads named explicitly: the traced route
    assert torch.equal(selected(x.clone())["a"], reference)
    assert not any(n.startswith("heads.b.") for n, _ in selected.named_parameters())
    batches = [(x.clone(), {"a": torch.randint(0, 3, (4,))})]  # "normalise" mutates its input
    compact = atp.cut_prune(
        model, x[:1].clone(), tasks=["a"], losses={"a": F.cross_entropy}, data=batches,
        pruning_ratio=0.0, progress=False,
    )  # fmt: skip
    torch.testing.assert_close(compact(x.clone())["a"], reference, rtol=0, atol=1e-6)
    assert same_state(model, snapshot)


def test_user_class_is_kept_when_heads_can_be_dropped():
    model = init_nontrivial(ResidualNet())
    x = example_input(model)
    compact = select_tasks(model, ["a", "seg"], example_inputs=x[:1])
    assert isinstance(compact, ResidualNet) and not isinstance(compact, fx.GraphModule)
    assert list(compact.heads.keys()) == ["a", "seg"]
    reference = model(x)
    out = compact(x)
    assert list(out) == ["a", "seg"]
    assert all(torch.equal(out[t], reference[t]) for t in out)
    assert "b" in model.heads  # the caller's model keeps its heads
    assert isinstance(select_tasks(model, ["a"]), fx.GraphModule)  # no example: traced, as before


class SplitNet(nn.Module):
    """Split sizes and a view read from layer attributes; ``explicit`` names the heads."""

    def __init__(self, explicit: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.explicit = explicit
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.mid = nn.Conv2d(16, 16, 3, padding=1)
        self.left = nn.Conv2d(8, 8, 3, padding=1)
        self.right = nn.Conv2d(8, 8, 1)
        self.heads = nn.ModuleDict({"a": _head(16, 3), "b": _head(16, 2), "c": _head(16, 4)})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = F.relu(self.mid(F.relu(self.stem(x))))
        p, q = torch.split(h, [self.left.in_channels, self.right.in_channels], dim=1)
        h = torch.cat([F.relu(self.left(p)), F.relu(self.right(q))], dim=1)
        h = h.view(-1, self.left.out_channels + self.right.out_channels, h.shape[2], h.shape[3])
        if self.explicit:
            return {"a": self.heads["a"](h), "b": self.heads["b"](h), "c": self.heads["c"](h)}
        return {name: head(h) for name, head in self.heads.items()}


def _split_data(model: nn.Module) -> tuple[Tensor, list, dict]:
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    targets = {t: torch.randint(0, v.shape[1], (6,)) for t, v in model(x).items()}
    return x, [(x, targets)], dict.fromkeys(targets, F.cross_entropy)


def test_attribute_sized_split_prunes_the_users_module():
    model = SplitNet().eval()
    snapshot = state_snapshot(model)
    x, batches, losses = _split_data(model)
    compact = atp.cut_prune(
        model, x[:1], tasks=["a", "c"], losses=losses, data=batches, pruning_ratio=0.5,
        progress=False,
    )  # fmt: skip
    assert isinstance(compact, SplitNet)
    assert compact.mid.out_channels < 16  # pruned, and its forward re-reads the sizes
    out = compact(x)
    assert list(out) == ["a", "c"] and out["a"].shape == (6, 3) and out["c"].shape == (6, 4)
    assert same_state(model, snapshot)


def test_attribute_sized_split_on_the_traced_route_is_a_clear_error():
    model = SplitNet(explicit=True).eval()
    x, batches, losses = _split_data(model)
    with pytest.raises(TransformCheckError, match=r"CUTPruner\.step.*self\.heads"):
        atp.cut_prune(
            model, x[:1], tasks=["a", "c"], losses=losses, data=batches, pruning_ratio=0.5,
            progress=False,
        )  # fmt: skip


class SigmoidNet(nn.Module):
    """A removed channel before a sigmoid still adds sigmoid(0) downstream."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.heads = nn.ModuleDict({"a": _head(8, 3)})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"a": self.heads["a"](self.conv2(torch.sigmoid(self.conv(x))))}


def test_prune_by_masks_checks_itself():
    model = SigmoidNet().eval()
    x = torch.randn(2, 3, 8, 8)
    masks = {"conv.weight": (torch.arange(8) % 2 == 0).view(8, 1, 1, 1)}
    with pytest.raises(TransformCheckError, match=r"prune_by_masks.*f\(0\) != 0"):
        atp.prune_by_masks(model, masks, x)
    compact = atp.prune_by_masks(model, masks, x, check=False)
    assert compact.conv.out_channels == 4


def test_compiled_and_data_parallel_models_are_unwrapped():
    model = init_nontrivial(ResidualNet())
    x = example_input(model)
    with pytest.warns(UserWarning, match="_orig_mod"):
        selected = select_tasks(torch.compile(model), ["a"], example_inputs=x[:1])
    assert isinstance(selected, ResidualNet)
    torch.testing.assert_close(selected(x)["a"], model(x)["a"], rtol=0, atol=0)
    wrapped = nn.DataParallel(model)
    batches = make_batches(model, 1)
    with pytest.warns(UserWarning, match=r"DataParallel.*model\.module"):
        compact = atp.cut_prune(
            wrapped, x[:1], tasks=["a"], losses=losses_for(model), data=batches,
            pruning_ratio=0.3, progress=False,
        )  # fmt: skip
    assert isinstance(compact, ResidualNet) and list(compact(x)) == ["a"]


def _saved(tmp_path) -> tuple:
    model = init_nontrivial(ResidualNet())
    x = example_input(model, 1)
    compact = atp.cut_prune(
        model, x, tasks=["a"], losses=losses_for(model), data=make_batches(model, 1),
        pruning_ratio=0.3, progress=False,
    )  # fmt: skip
    atp.save_pruned(compact, tmp_path / "m.pt")
    return compact, x


def test_load_pruned_checks_the_rebuilt_model(tmp_path):
    compact, x = _saved(tmp_path)
    loaded = atp.load_pruned(tmp_path / "m.pt", ResidualNet, x).eval()
    assert isinstance(loaded, ResidualNet)
    torch.testing.assert_close(loaded(x)["a"], compact.eval()(x)["a"], rtol=0, atol=0)

    class Hardcoded(ResidualNet):  # same parameters; its forward assumes the unpruned width
        def forward(self, x: Tensor) -> dict[str, Tensor]:
            f = self.trunk(x)
            f = f.reshape(f.shape[0], 32, f.shape[2], f.shape[3])
            return {name: head(f) for name, head in self.heads.items()}

    with pytest.raises(ValueError, match=r"load_pruned.*model_factory.*fails"):
        atp.load_pruned(tmp_path / "m.pt", Hardcoded, x)


def test_load_pruned_names_what_a_bad_file_is(tmp_path):
    _saved(tmp_path)
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("not a model\n")
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    export_torchscript(ResidualNet().eval(), torch.randn(1, 1, 16, 16), tmp_path / "ts.pt")
    cases = {"empty": "is empty", "text": "text file", "cut": "truncated", "ts": "torch.jit.load"}
    for name, message in cases.items():
        with warnings.catch_warnings(), pytest.raises(ValueError, match=message) as info:
            warnings.simplefilter("ignore")
            atp.load_pruned(tmp_path / f"{name}.pt", ResidualNet, torch.randn(1, 1, 16, 16))
        assert f"{name}.pt" in str(info.value)
        assert "weights_only=False" not in str(info.value)
