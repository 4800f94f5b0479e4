"""MergedNetwork: exactness when nothing is shared, for_tasks, unused groups, tracing."""

from __future__ import annotations

import itertools
import pickle

import pytest
import torch
from torch import nn

from pam_plugin import MergedNetwork, MTZMerger, PAMMerger, build_merged
from tests.test_pam_networks import (
    FACTORIES,
    assert_unchanged,
    inputs_for,
    mlp,
    networks_for,
    snapshot,
)

NAMES = sorted(FACTORIES)


def subsets(tasks: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [c for size in range(1, len(tasks) + 1) for c in itertools.combinations(tasks, size)]


@pytest.mark.parametrize("name", NAMES)
def test_exclusive_groups_reproduce_every_network(name: str) -> None:
    networks = networks_for(name, ("A", "B", "C"))
    x = inputs_for(name)
    before = snapshot(networks)
    merged = build_merged(networks, x).eval()
    outputs = merged(x)
    assert list(outputs) == ["A", "B", "C"]
    for task, network in networks.items():
        assert torch.allclose(outputs[task], network(x), atol=1e-6, rtol=0)
    assert_unchanged(networks, before)
    for sizes in list(merged.group_sizes().values())[:-1]:
        assert set(sizes) == {"A", "B", "C"}  # no merging: every group exclusive


@pytest.mark.parametrize("name", NAMES)
def test_for_tasks_equals_the_full_network(name: str) -> None:
    networks = networks_for(name, ("A", "B", "C"))
    x = inputs_for(name)
    merged = build_merged(networks, x).eval()
    full = merged(x)
    total = sum(p.numel() for p in merged.parameters())
    for tasks in subsets(("A", "B", "C")):
        sub = merged.for_tasks(tasks)
        outputs = sub(x)
        assert list(outputs) == list(tasks)
        for task in tasks:
            assert torch.equal(outputs[task], full[task])
        held = sum(p.numel() for p in sub.parameters())
        assert held < total if len(tasks) < 3 else held == total
    assert list(merged(x)) == ["A", "B", "C"]  # for_tasks left the original whole


def test_for_tasks_rejects_unknown_or_empty_tasks() -> None:
    merged = build_merged(networks_for("mlp"), inputs_for("mlp"))
    with pytest.raises(ValueError, match="unknown task"):
        merged.for_tasks(["Z"])
    with pytest.raises(ValueError, match="empty"):
        merged.for_tasks([])
    with pytest.raises(TypeError, match="string"):
        merged.for_tasks("A")


@pytest.mark.parametrize("name", NAMES)
def test_merging_one_network_returns_an_equivalent_one(name: str) -> None:
    network = FACTORIES[name][0](4, 3)
    x = inputs_for(name)
    labels = torch.randint(0, 4, (x.shape[0],))
    for merged in (
        PAMMerger(alpha_conv=0.5, alpha_fc=0.5).merge({"A": network}, x, {"A": labels}),
        MTZMerger().merge({"A": network}, x),
    ):
        assert torch.allclose(merged.eval()(x)["A"], network(x), atol=1e-9, rtol=0)


def test_given_groups_are_built_and_unused_groups_are_removed() -> None:
    """Layer 0 keeps exclusive groups that layer 4 (only a shared group) cannot read."""
    networks, x = {"A": mlp(3, 0), "B": mlp(4, 1)}, inputs_for("mlp")
    everyone = frozenset({"A", "B"})
    first = {
        everyone: [((t, i),) for t in "AB" for i in range(6)],
        frozenset("A"): [(("A", i),) for i in range(6, 12)],
        frozenset("B"): [(("B", i),) for i in range(6, 12)],
    }
    second = {everyone: [((t, i),) for t in "AB" for i in range(8)]}
    merged = build_merged(networks, x, {"0": first, "4": second})
    sizes = merged.group_sizes()
    assert sizes == {
        "0": {"shared": 12},  # A's and B's exclusive groups fed nothing: removed
        "4": {"shared": 16},
        "6": {"A": 3, "B": 4},
    }
    assert set(merged.groups("1")) == {"shared"}  # their BatchNorms are gone too
    outputs = merged.eval()(x)
    assert outputs["A"].shape == (x.shape[0], 3) and outputs["B"].shape == (x.shape[0], 4)


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ({"nope": {}}, "unknown layer 'nope'"),
        ({"0": {frozenset("AZ"): []}}, "has the key"),
        ({"0": {frozenset("A"): [(("A", 12),)]}}, r"has the neuron \(\('A', 12\),\)"),
        ({"0": {frozenset("A"): [(("A", 1),)], frozenset("B"): [(("A", 1),)]}}, "at most once"),
        ({"0": {frozenset("A"): [(("Z", 1),)]}}, "has the neuron"),
    ],
)
def test_given_groups_are_checked(
    groups: dict[str, dict[frozenset[str], list[tuple[tuple[str, int], ...]]]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_merged(networks_for("mlp"), inputs_for("mlp"), groups)


@pytest.mark.parametrize("name", NAMES)
def test_merged_network_pickles(name: str) -> None:
    x = inputs_for(name)
    merged = build_merged(networks_for(name), x).eval()
    restored = pickle.loads(pickle.dumps(merged))
    assert all(torch.equal(restored(x)[t], merged(x)[t]) for t in merged.tasks)


@pytest.mark.parametrize("name", NAMES)
def test_merged_network_traces_with_fx(name: str) -> None:
    x = inputs_for(name)
    merged = build_merged(networks_for(name), x).eval()
    traced = torch.fx.symbolic_trace(merged)
    expected, got = merged(x), traced(x)
    assert all(torch.equal(expected[t], got[t]) for t in expected)


def test_merged_network_is_a_module_with_one_block_per_group() -> None:
    merged = build_merged(networks_for("lenet"), inputs_for("lenet"))
    assert isinstance(merged, nn.Module) and isinstance(merged, MergedNetwork)
    assert list(merged.layer_groups()) == ["0", "3", "7", "9"]
    assert set(merged.groups("0")) == {"A", "B"}
    assert merged.output_layer_names == ("9",)
    assert [list(m) for m in merged.output_layers().values()] == [
        [merged.groups("9")["A"]],
        [merged.groups("9")["B"]],
    ]


def test_layers_and_modules_are_named_by_module_name() -> None:
    """groups/group_sizes/layer_groups take the networks' module names; node names are deprecated."""
    networks, x = networks_for("resnet"), inputs_for("resnet")
    merged = build_merged(networks, x)
    module_names = {name for name, _ in networks["A"].named_modules()}
    assert list(merged.group_sizes()) == list(merged.layer_groups())
    assert set(merged.group_sizes()) <= module_names
    assert "layer1.conv1" in merged.group_sizes()  # a dotted name, not the fx node layer1_conv1
    for name in ("layer1.conv1", "layer2.shortcut.1"):  # a conv layer, a BatchNorm
        assert set(merged.groups(name)) == {"A", "B"}
    assert merged.groups("layer1.conv1")["A"] is merged.layer_groups()["layer1.conv1"]["A"]
    with pytest.warns(DeprecationWarning, match=r"groups\('layer1.conv1'\)"):
        by_node = merged.groups("layer1_conv1")
    assert by_node is merged.groups("layer1.conv1")
    with pytest.raises(ValueError, match="module names are"):
        merged.groups("nope")


def test_a_residual_stage_is_named_by_any_of_its_layers() -> None:
    """stem and layer1.conv2 write one channel space: either name gives it its groups."""
    networks, x = networks_for("resnet"), inputs_for("resnet")
    everyone = frozenset("AB")
    stage = {everyone: [((t, i),) for t in "AB" for i in range(4)]}
    by_first = build_merged(networks, x, {"stem": stage}).group_sizes()
    by_second = build_merged(networks, x, {"layer1.conv2": stage}).group_sizes()
    assert by_first == by_second
    assert by_first["stem"] == {"shared": 8}
    assert by_first != build_merged(networks, x).group_sizes()  # the groups were used
    with pytest.raises(ValueError, match="one channel space"):
        build_merged(networks, x, {"stem": stage, "layer1.conv2": stage})
    with pytest.raises(ValueError, match="one channel space"):
        MTZMerger(share={"stem": 1.0, "layer1.conv2": 0.5}).merge(networks, x)


def test_every_built_network_is_checked_on_the_inputs() -> None:
    """build_network (behind every merger) runs the result once and compares output shapes."""
    from cut_plugin.checks import TransformCheckError
    from pam_plugin.construction import Prepared, build_network

    name = NAMES[0]
    prepared = Prepared(networks_for(name, ("A", "B")), inputs_for(name))
    assert set(prepared.output_shapes) == {"A", "B"}
    build_network(prepared, {})  # the true shapes pass
    prepared.output_shapes["A"] = torch.Size([1, 999])
    with pytest.raises(TransformCheckError, match="merge: the resulting model's output 'A'"):
        build_network(prepared, {})
