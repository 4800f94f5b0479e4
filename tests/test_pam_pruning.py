"""prune_merged: Torch-Pruning on a merged network (adapters.torch_pruning)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp

from adapters.torch_pruning import prune_merged
from pam_plugin import MergedNetwork, PAMMerger, build_merged, combination_costs, network_cost
from tests.test_pam_costs import partly_shared
from tests.test_pam_networks import assert_unchanged, inputs_for, networks_for, snapshot


def pam_merged(name: str) -> tuple[MergedNetwork, torch.Tensor, dict[str, torch.Tensor]]:
    x = inputs_for(name, 24)
    generator = torch.Generator().manual_seed(4)
    labels = {t: torch.randint(0, 3, (24,), generator=generator) for t in "AB"}
    merged = PAMMerger(alpha_conv=0.01, alpha_fc=0.01).merge(networks_for(name), x, labels)
    return merged, x, labels


def check_pruned(merged: MergedNetwork, pruned: MergedNetwork, x: torch.Tensor) -> None:
    """MACs fall, output widths kept, for_tasks equals the full pruned network."""
    assert network_cost(pruned, x[:2]).macs < network_cost(merged, x[:2]).macs
    assert list(pruned.group_sizes()) == list(merged.group_sizes())  # the same layers, by name
    output = merged.output_layer_names[-1]
    assert pruned.group_sizes()[output] == merged.group_sizes()[output]
    pruned.eval()
    full = pruned(x)
    assert {t: v.shape for t, v in full.items()} == {
        t: v.shape for t, v in merged.eval()(x).items()
    }
    for task in pruned.tasks:
        assert torch.allclose(pruned.for_tasks([task])(x)[task], full[task], atol=1e-12)


@pytest.mark.parametrize("name", ["lenet", "resnet", "functional"])
@pytest.mark.parametrize("pruned_groups", ["shared", "all"])
def test_magnitude_pruning_of_a_pam_network(name: str, pruned_groups: str) -> None:
    merged, x, _ = pam_merged(name)
    before = snapshot({"m": merged})
    pruned = prune_merged(
        merged,
        x[:2],
        importance=tp.importance.GroupMagnitudeImportance(),
        pruning_ratio=0.5,
        pruned_groups=pruned_groups,  # type: ignore[arg-type]
    )
    assert_unchanged({"m": merged}, before)
    check_pruned(merged, pruned, x)


def test_shared_pruning_keeps_exclusive_groups_and_all_prunes_them() -> None:
    merged, x = partly_shared()
    importance = tp.importance.GroupMagnitudeImportance()
    shared = prune_merged(
        merged, x[:2], importance=importance, pruning_ratio=0.5, pruned_groups="shared"
    )
    everything = prune_merged(
        merged, x[:2], importance=importance, pruning_ratio=0.5, pruned_groups="all"
    )
    sizes = merged.group_sizes()
    hidden = [layer for layer in sizes if layer not in merged.output_layer_names]
    assert hidden
    for layer in hidden:
        original, kept, pruned = (
            sizes[layer],
            shared.group_sizes()[layer],
            everything.group_sizes()[layer],
        )
        assert kept["shared"] < original["shared"]
        assert {g: kept[g] for g in "ABC"} == {g: original[g] for g in "ABC"}
        assert all(pruned[g] < original[g] for g in "ABC")
    costs = combination_costs(shared, x[:2])
    assert (
        costs[frozenset("A")].macs < costs[frozenset("ABC")].macs
    )  # for_tasks still switches groups off


def test_taylor_pruning_with_data_and_iterative_steps() -> None:
    merged, x, labels = pam_merged("lenet")
    data = [(x, labels)]
    losses = {t: F.cross_entropy for t in "AB"}
    pruned = prune_merged(
        merged, x[:2], importance=tp.importance.GroupTaylorImportance(), pruning_ratio=0.5,
        iterative_steps=2, data=data, losses=losses,
    )  # fmt: skip
    check_pruned(merged, pruned, x)
    assert all(p.grad is None for p in pruned.parameters())
    assert all(p.grad is None for p in merged.parameters())


def test_taylor_without_gradients_is_a_clear_error() -> None:
    merged, x, _ = pam_merged("lenet")
    with pytest.raises(ValueError, match="Taylor importance needs gradients"):
        prune_merged(
            merged, x[:2], importance=tp.importance.GroupTaylorImportance(), pruning_ratio=0.5
        )


def test_prune_merged_rejects_bad_arguments() -> None:
    merged = build_merged(networks_for("mlp"), inputs_for("mlp"))
    x = inputs_for("mlp", 2)
    importance = tp.importance.GroupMagnitudeImportance()
    with pytest.raises(ValueError, match="pruned_groups must be one of"):
        prune_merged(merged, x, importance=importance, pruning_ratio=0.5, pruned_groups="exclusive")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pruning_ratio"):
        prune_merged(merged, x, importance=importance, pruning_ratio=1.0)
    with pytest.raises(TypeError, match="Importance"):
        prune_merged(merged, x, importance=lambda group: None, pruning_ratio=0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="MergedNetwork"):
        prune_merged(networks_for("mlp")["A"], x, importance=importance, pruning_ratio=0.5)  # type: ignore[arg-type]


def test_groups_is_the_deprecated_name_of_pruned_groups() -> None:
    merged, x = partly_shared()
    importance = tp.importance.GroupMagnitudeImportance()
    with pytest.warns(DeprecationWarning, match="pruned_groups"):
        old = prune_merged(merged, x[:2], importance=importance, pruning_ratio=0.5, groups="all")
    new = prune_merged(merged, x[:2], importance=importance, pruning_ratio=0.5, pruned_groups="all")
    shared = prune_merged(merged, x[:2], importance=importance, pruning_ratio=0.5)
    assert old.group_sizes() == new.group_sizes()
    assert old.group_sizes() != shared.group_sizes()  # groups= reached the pruner, not ignored
    with pytest.raises(TypeError, match="both pruned_groups= and .* groups="):
        prune_merged(
            merged, x[:2], importance=importance, pruning_ratio=0.5,
            pruned_groups="shared", groups="all",
        )  # fmt: skip
