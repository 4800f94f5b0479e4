"""Edge cases of the Torch-Pruning adapter: options naming the caller's modules, interactive
steps, saving every kind of compact model, grouped convs, tied weights across layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import adapters.torch_pruning as atp
from cut_plugin import apply_masks
from tests.toy_models import ConcatNet, ResidualNet, init_nontrivial, losses_for, make_batches


def _setup():
    torch.manual_seed(0)
    model = init_nontrivial(ResidualNet())
    return model, make_batches(model, 2), losses_for(model)


def test_ignored_layers_of_the_callers_model_are_honoured():
    model, batches, losses = _setup()
    x = batches[0][0][:1]
    keep = model.trunk[4]
    compact = atp.cut_prune(model, x, tasks=["a", "b"], losses=losses, data=batches, pruning_ratio=0.5,
                            ignored_layers=[keep], progress=False)  # fmt: skip
    assert dict(compact.named_modules())["trunk.4"].out_channels == keep.out_channels
    assert dict(compact.named_modules())["trunk.0"].out_channels < model.trunk[0].out_channels


def test_interactive_steps_record_history_and_reload(tmp_path):
    model, batches, losses = _setup()
    x = batches[0][0][:1]
    pruner = atp.CUTPruner(model, x, tasks=["a", "seg"], losses=losses, data=batches, pruning_ratio=0.4,
                           progress=False)  # fmt: skip
    for group in pruner.step(interactive=True):
        group.prune()
    assert atp.pruning_history(pruner.model)
    atp.save_pruned(pruner.model, tmp_path / "m.pt")
    loaded = atp.load_pruned(tmp_path / "m.pt", ResidualNet, x).eval()
    xb = batches[0][0]
    for task, value in pruner.model.eval()(xb).items():
        torch.testing.assert_close(loaded(xb)[task], value)


def test_save_load_weight_granularity_tuple_outputs_and_two_stages(tmp_path):
    model, batches, losses = _setup()
    x = batches[0][0]
    masked = atp.cut_prune(model, x[:1], tasks=["a"], losses=losses, data=batches, pruning_ratio=0.5,
                           granularity="weight", progress=False)  # fmt: skip
    atp.save_pruned(masked, tmp_path / "w.pt")
    torch.testing.assert_close(
        atp.load_pruned(tmp_path / "w.pt", ResidualNet, x[:1]).eval()(x)["a"], masked(x)["a"]
    )

    first = atp.cut_prune(model, x[:1], tasks=["a", "b"], losses=losses, data=batches, pruning_ratio=0.3,
                          progress=False)  # fmt: skip
    second = atp.cut_prune(first, x[:1], tasks=["a"], losses=losses, data=batches, pruning_ratio=0.3,
                           progress=False)  # fmt: skip
    atp.save_pruned(second, tmp_path / "two.pt")
    loaded = atp.load_pruned(tmp_path / "two.pt", ResidualNet, x[:1]).eval()
    torch.testing.assert_close(loaded(x)["a"], second.eval()(x)["a"])

    tuple_model = init_nontrivial(ConcatNet())
    tuple_batches = make_batches(tuple_model, 1)
    compact = atp.cut_prune(tuple_model, tuple_batches[0][0][:1], tasks=["right"], losses=losses_for(tuple_model),
                            data=tuple_batches, pruning_ratio=0.5, task_names=["left", "right"],
                            progress=False)  # fmt: skip
    atp.save_pruned(compact, tmp_path / "t.pt")
    reloaded = atp.load_pruned(tmp_path / "t.pt", ConcatNet, tuple_batches[0][0][:1]).eval()
    xt = tuple_batches[0][0]
    torch.testing.assert_close(reloaded(xt)["right"], compact.eval()(xt)["right"])


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.heads = nn.ModuleDict(
            {"p": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))}
        )

    def forward(self, x):
        return {"p": self.heads["p"](F.relu(self.c2(F.relu(self.c1(x)))))}


def test_uneven_masks_before_a_grouped_conv():
    torch.manual_seed(0)
    model = Grouped().eval()
    x = torch.randn(2, 3, 8, 8)
    mask = torch.ones(8, 1, 1, 1, dtype=torch.bool)
    mask[[0, 1, 2, 4, 5]] = False  # group 0 loses 0,1,2; group 1 loses 4,5 (0,1 in-group)
    masks = {"c1.weight": mask}
    compact = atp.prune_by_masks(model, masks, x[:1])
    masked = apply_masks(model, atp.align_masks(model, masks, x[:1]))
    torch.testing.assert_close(compact(x)["p"], masked(x)["p"])
    assert compact.c1.out_channels == 4  # channels 0,1 of each group go; 2 stays for group 1's 6


class TiedLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(6, 6)
        self.second = nn.Linear(6, 6)
        self.second.weight = self.first.weight
        self.heads = nn.ModuleDict({"p": nn.Linear(6, 3)})

    def forward(self, x):
        return {"p": self.heads["p"](F.relu(self.second(F.relu(self.first(x)))))}


def test_weights_tied_across_layers_stay_tied():
    torch.manual_seed(0)
    model = TiedLayers()
    x = torch.randn(5, 6)
    batches = [(x, {"p": torch.randint(0, 3, (5,))})]
    compact = atp.cut_prune(model, x[:1], tasks=["p"], losses={"p": F.cross_entropy}, data=batches,
                            pruning_ratio=0.5, progress=False)  # fmt: skip
    modules = dict(compact.named_modules())
    assert modules["first"].weight is modules["second"].weight
