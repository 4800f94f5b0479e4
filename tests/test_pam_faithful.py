"""The official code's options (full-map MI, fully shared layers, presets, the drop check) and group deletion."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor

from pam_plugin import (
    PAM_PRESETS,
    MergedNetwork,
    PAMMerger,
    delete_groups,
    irrelevant_path,
    irrelevant_set,
    mutual_information,
    network_cost,
)
from pam_plugin.activations import channel_values
from pam_plugin.pam import suggest_alpha
from tests.test_pam_costs import partly_shared
from tests.test_pam_mergers import labels_for
from tests.test_pam_networks import inputs_for, networks_for


def unique_labels(x: Tensor) -> dict[str, Tensor]:
    """One class per sample: every non-constant neuron has positive MI (relevant at α = 0)."""
    return {t: torch.arange(x.shape[0]) for t in "AB"}


def test_map_summary_flattens_each_channel() -> None:
    value = torch.rand(3, 4, 5, 6)
    assert torch.equal(channel_values(value, 1, "map"), value.flatten(2))
    assert torch.equal(channel_values(value, 1, "max"), value.flatten(2).amax(2, keepdim=True))
    flat = torch.rand(3, 8)  # a flattened (C=2, 4 positions) map feeding a linear layer
    assert channel_values(flat, 4, "map").shape == (3, 2, 4)


def test_full_map_mi_is_the_mi_of_the_flattened_maps() -> None:
    """Oracle: MI of one channel measured on its whole map equals the KDE bound of the map vectors."""
    x = inputs_for("lenet", 24)
    network = networks_for("lenet")["A"]
    labels = labels_for(x)["A"]
    with torch.no_grad():
        maps = torch.relu(network[0](x))  # (B, 4, 16, 16)
    values = channel_values(maps, 1, "map")  # (B, 4, 256)
    for channel in range(4):
        direct = mutual_information(maps[:, channel].flatten(1), labels)
        via = mutual_information(values[:, channel : channel + 1], labels)
        assert via == pytest.approx(direct, rel=1e-9)
    # the map is far more informative than its max: the α scale depends on the summary
    peak = channel_values(maps, 1, "max")
    assert mutual_information(values[:, :1], labels) > mutual_information(peak[:, :1], labels)


def test_merge_with_the_map_summary_measures_the_maps() -> None:
    x = inputs_for("lenet", 24)
    networks, labels = networks_for("lenet"), unique_labels(x)
    by_max = PAMMerger(alpha_conv=1.0, alpha_fc=0.0, max_dropped=None)
    by_map = PAMMerger(alpha_conv=1.0, alpha_fc=0.0, summary="map", max_dropped=None)
    kept_max, kept_map = (
        [sum(g.values()) for g in m.merge(networks, x, labels).group_sizes().values()]
        for m in (by_max, by_map)
    )
    # informative maps: fewer conv neurons irrelevant to every task at one α
    assert kept_map[:2] == [8, 8] and kept_max[0] < 8 and kept_max[1] < 8


def test_unmerged_layers_are_fully_shared_and_exact() -> None:
    """α = 0: nothing irrelevant, every neuron shared; block-diagonal, so every task is exact."""
    x = inputs_for("lenet", 24)
    networks, labels = networks_for("lenet"), unique_labels(x)
    merger = PAMMerger(alpha_conv=0.0, alpha_fc=0.0, layers=slice(-1, None), unmerged="shared")
    merged = merger.merge(networks, x, labels).eval()
    sizes = merged.group_sizes()
    assert sizes["0"] == {"shared": 8} and sizes["3"] == {"shared": 12}  # outside the range
    assert list(sizes["7"]) == ["shared"]
    outputs = merged(x)
    for task, network in networks.items():
        with torch.no_grad():
            assert torch.allclose(outputs[task], network(x), atol=1e-10)
    # the default: layers outside the range stay each network's own, also exact
    exclusive = PAMMerger(alpha_conv=0.0, alpha_fc=0.0, layers=slice(0, 1)).merge(
        networks, x, labels
    )
    assert exclusive.group_sizes()["3"] == {"A": 6, "B": 6}
    outputs = exclusive.eval()(x)
    for task, network in networks.items():
        with torch.no_grad():
            assert torch.allclose(outputs[task], network(x), atol=1e-10)


def test_presets_hold_the_official_settings() -> None:
    merger = PAMMerger.preset("vgg16-lfw")
    assert (merger.alpha_conv, merger.alpha_fc, merger.layers) == (7.0, 6.0, slice(-4, None))
    assert merger.summary == "map" and merger.unmerged == "shared"
    assert PAMMerger.preset("lenet5", grouping="subsets").grouping == "subsets"
    assert {"lenet5", "vgg16-lfw", "vgg16-celeba"} <= set(PAM_PRESETS)
    with pytest.raises(ValueError, match="preset"):
        PAMMerger.preset("vgg19")
    with pytest.raises(ValueError, match="summary"):
        PAMMerger(summary="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unmerged"):
        PAMMerger(unmerged="dropped")  # type: ignore[arg-type]


def test_a_merge_dropping_most_of_a_layer_warns_with_an_alpha() -> None:
    x = inputs_for("lenet", 24)
    networks, labels = networks_for("lenet"), unique_labels(x)
    with pytest.warns(UserWarning, match=r"layer '3'.*alpha_conv <= [0-9.e-]+ drops at most 50 %"):
        PAMMerger(alpha_conv=1.0, alpha_fc=0.0).merge(networks, x, labels)
    with pytest.raises(ValueError, match="drops 11 of the 12 pooled neurons"):
        PAMMerger(alpha_conv=1.0, alpha_fc=0.0, on_dropped="raise").merge(networks, x, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PAMMerger(alpha_conv=1.0, alpha_fc=0.0, max_dropped=None).merge(networks, x, labels)


def test_suggested_alpha_is_the_largest_that_keeps_the_limit() -> None:
    features = torch.rand(24, 10, dtype=torch.float64)
    labels = {t: torch.randint(0, 3, (24,), generator=torch.Generator().manual_seed(k))
              for k, t in enumerate("AB")}  # fmt: skip
    paths = {t: irrelevant_path(features, y, alpha=10.0) for t, y in labels.items()}
    alpha = suggest_alpha(paths, 10, 0.3)
    at = {t: set(irrelevant_set(features, y, alpha=alpha)) for t, y in labels.items()}
    assert len(at["A"] & at["B"]) <= 3
    above = {t: set(irrelevant_set(features, y, alpha=alpha * 1.0001 + 1e-9)) for t, y in labels.items()}  # fmt: skip
    assert alpha == 0.0 or len(above["A"] & above["B"]) > 3 or above == at


# ---------------------------------------------------------------- group deletion


def _outputs(model: MergedNetwork, x: Tensor) -> dict[str, Tensor]:
    with torch.no_grad():
        return model.eval()(x)


def test_deleting_an_exclusive_chain_keeps_for_tasks_exact() -> None:
    merged, x = partly_shared()
    before = _outputs(merged, x)
    pruned = merged.without_group("4", "A")  # A's group of the last hidden layer
    sizes = pruned.group_sizes()
    assert "A" not in sizes["4"] and "A" not in sizes["0"]  # the whole exclusive chain
    assert sizes["0"]["B"] == merged.group_sizes()["0"]["B"]
    assert network_cost(pruned, x[:2]).macs < network_cost(merged, x[:2]).macs
    after = _outputs(pruned, x)
    for task in ("B", "C"):  # not served by the deleted group: exactly as before
        assert torch.equal(after[task], before[task])
    assert not torch.allclose(after["A"], before["A"])  # the guard: something changed
    for task in pruned.tasks:  # the merged network for task t == the pruned network on t
        assert torch.allclose(_outputs(pruned.for_tasks([task]), x)[task], after[task])


def test_deleting_a_first_layer_group_moves_nothing_it_should_keep() -> None:
    merged, x = partly_shared()
    pruned = merged.without_group("0", "shared")
    after = _outputs(pruned, x)
    assert "shared" not in pruned.group_sizes()["0"] and "shared" not in pruned.group_sizes()["4"]
    for task in pruned.tasks:
        assert torch.allclose(_outputs(pruned.for_tasks([task]), x)[task], after[task])
    with pytest.raises(ValueError, match="no group"):
        merged.without_group("0", "D")
    with pytest.raises(ValueError, match="task outputs"):
        merged.without_group(merged.output_layer_names[-1], "A")


def test_delete_groups_follows_accept() -> None:
    merged, x = partly_shared()
    unchanged, none = delete_groups(merged, x, accept=lambda m: False)
    assert none == [] and unchanged.group_sizes() == merged.group_sizes()
    kept = merged.group_sizes()["4"]["B"]
    pruned, deleted = delete_groups(
        merged, x, accept=lambda m: m.group_sizes()["4"].get("B") == kept
    )
    assert deleted and all(d["macs_saved"] > 0 for d in deleted)
    assert pruned.group_sizes()["4"]["B"] == kept
    assert network_cost(pruned, x[:2]).macs < network_cost(merged, x[:2]).macs
    after = _outputs(pruned, x)
    for task in pruned.tasks:
        assert torch.allclose(_outputs(pruned.for_tasks([task]), x)[task], after[task])
