"""PAMMerger and MTZMerger: what they change, their grouping rules, and their errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from pam_plugin import MTZMerger, PAMMerger, relevance_groups, zip_costs
from tests.test_pam_networks import (
    assert_unchanged,
    inputs_for,
    lenet,
    mlp,
    networks_for,
    resnet,
    snapshot,
)


def labels_for(x: Tensor, tasks: str = "AB", classes: int = 3, seed: int = 5) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {t: torch.randint(0, classes, (x.shape[0],), generator=generator) for t in tasks}


# ---------------------------------------------------------------- grouping rules


@settings(max_examples=30, deadline=None)
@given(
    num_tasks=st.integers(1, 4),
    size=st.integers(1, 6),
    grouping=st.sampled_from(["paper", "subsets"]),
    data=st.data(),
)
def test_groups_follow_the_relevance_of_each_neuron(
    num_tasks: int, size: int, grouping: str, data: st.DataObject
) -> None:
    tasks = [f"t{k}" for k in range(num_tasks)]
    pooled = num_tasks * size
    irrelevant = {t: data.draw(st.sets(st.integers(0, pooled - 1))) for t in tasks}
    groups = relevance_groups(irrelevant, size, tasks, grouping=grouping)  # type: ignore[arg-type]
    placed = [n[0] for neurons in groups.values() for n in neurons]
    assert len(placed) == len(set(placed))
    dropped = set.intersection(*(set(s) for s in irrelevant.values()))
    for key, neurons in groups.items():
        for ((owner, index),) in neurons:
            position = tasks.index(owner) * size + index
            relevant = frozenset(t for t in tasks if position not in irrelevant[t])
            assert position not in dropped and relevant
            if grouping == "subsets" or len(relevant) == 1:
                assert key == relevant
            else:
                assert key == frozenset(tasks)
    assert len(placed) == pooled - len(dropped)


# ---------------------------------------------------------------- PAM


def test_pam_shares_the_neurons_of_identical_copies() -> None:
    networks = networks_for("lenet", same=True)
    x = inputs_for("lenet", 32)
    same = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(0))
    before = snapshot(networks)
    merged = PAMMerger(alpha_conv=0.05, alpha_fc=0.05).merge(networks, x, {"A": same, "B": same})
    assert_unchanged(networks, before)
    sizes = merged.group_sizes()
    assert list(sizes) == ["0", "3", "7", "9"]  # keyed by the networks' module names
    hidden = {layer: sizes[layer] for layer in ("0", "3", "7")}
    assert all(set(s) == {"shared"} for s in hidden.values())  # same relevance for both tasks
    widths = {"0": 4, "3": 6, "7": 16}
    assert all(0 < hidden[layer]["shared"] <= 2 * widths[layer] for layer in hidden)
    assert sizes["9"] == {"A": 3, "B": 3}


def test_pam_groups_by_task_relevance() -> None:
    """A neuron copying one task's label is exclusive to it; near-constant neurons are dropped."""
    x = inputs_for("mlp", 96)
    labels = labels_for(x, seed=11)
    x[:, 0], x[:, 1] = labels["A"].double(), labels["B"].double()
    networks = {"A": mlp(3, 0), "B": mlp(3, 1)}
    for task, network in networks.items():
        with torch.no_grad():
            first = network[0]  # type: ignore[index]
            first.weight.mul_(1e-3)
            first.bias.zero_()
            first.weight[0] = 0.0
            first.weight[0, 0 if task == "A" else 1] = 5.0
    before = snapshot(networks)
    groups = PAMMerger(alpha_fc=0.1).groups(networks, x, labels)
    assert_unchanged(networks, before)
    assert groups["0"] == {frozenset("A"): [(("A", 0),)], frozenset("B"): [(("B", 0),)]}
    subsets = PAMMerger(alpha_fc=0.1, grouping="subsets").groups(networks, x, labels)
    assert subsets == groups  # with two tasks the two rules agree


def test_pam_subsets_give_a_group_per_task_subset() -> None:
    x = inputs_for("mlp", 40)
    base = labels_for(x, "A", seed=2)["A"]
    labels = {"A": base, "B": base.clone(), "C": labels_for(x, "C", seed=9)["C"]}
    networks = networks_for("mlp", ("A", "B", "C"), same=True)
    paper = PAMMerger(alpha_fc=0.05).merge(networks, x, labels)
    subsets = PAMMerger(alpha_fc=0.05, grouping="subsets").merge(networks, x, labels)
    assert all(set(s) <= {"shared", "A", "B", "C"} for s in paper.group_sizes().values())
    assert any("A&B" in s for s in subsets.group_sizes().values())  # relevant to A and B only
    outputs = subsets.eval()(x)
    for tasks in (["A"], ["B", "C"]):
        sub = subsets.for_tasks(tasks)(x)
        assert all(torch.equal(sub[t], outputs[t]) for t in tasks)


def test_pam_layers_option_merges_only_the_listed_layers() -> None:
    x = inputs_for("lenet", 24)
    merged = PAMMerger(alpha_conv=0.05, alpha_fc=0.05, layers=["3"]).merge(
        networks_for("lenet"), x, labels_for(x)
    )
    sizes = merged.group_sizes()
    assert sizes["0"] == {"A": 4, "B": 4} and sizes["7"] == {"A": 16, "B": 16}
    with pytest.raises(ValueError, match="unknown layer"):
        PAMMerger(layers=["nope"]).merge(networks_for("lenet"), x, labels_for(x))


def test_pam_on_a_residual_network_keeps_for_tasks_exact() -> None:
    x = inputs_for("resnet", 24)
    merged = (
        PAMMerger(alpha_conv=0.05, alpha_fc=0.05)
        .merge(networks_for("resnet"), x, labels_for(x))
        .eval()
    )
    full = merged(x)
    for task in "AB":
        assert torch.equal(merged.for_tasks([task])(x)[task], full[task])


# ---------------------------------------------------------------- PAM errors


def bad_architecture() -> tuple[dict[str, nn.Module], Tensor, dict[str, Tensor]]:
    x = inputs_for("mlp")
    wider = nn.Sequential(
        nn.Linear(10, 13), nn.ReLU(), nn.Linear(13, 8), nn.ReLU(), nn.Linear(8, 3)
    ).double()
    return {"A": mlp(), "B": wider}, x, labels_for(x)


def short_labels() -> tuple[dict[str, nn.Module], Tensor, dict[str, Tensor]]:
    x = inputs_for("mlp")
    return networks_for("mlp"), x, {"A": torch.zeros(5, dtype=torch.long), "B": labels_for(x)["B"]}


def extra_labels() -> tuple[dict[str, nn.Module], Tensor, dict[str, Tensor]]:
    x = inputs_for("mlp")
    return networks_for("mlp"), x, labels_for(x, "ABC")


def missing_labels() -> tuple[dict[str, nn.Module], Tensor, dict[str, Tensor]]:
    x = inputs_for("mlp")
    return networks_for("mlp"), x, labels_for(x, "A")


def one_sample() -> tuple[dict[str, nn.Module], Tensor, dict[str, Tensor]]:
    x = inputs_for("mlp", 1)
    return networks_for("mlp"), x, labels_for(x)


def nan_weights() -> tuple[dict[str, nn.Module], Tensor, dict[str, Tensor]]:
    networks, x = networks_for("mlp"), inputs_for("mlp")
    with torch.no_grad():
        networks["B"][4].weight[0, 0] = float("nan")  # type: ignore[index]
    return networks, x, labels_for(x)


def bad_task_name() -> tuple[dict[str, nn.Module], Tensor, dict[str, Tensor]]:
    x = inputs_for("mlp")
    return {"a.b": mlp(), "B": mlp()}, x, {"a.b": labels_for(x)["A"], "B": labels_for(x)["B"]}


BAD_INPUTS: dict[
    str, tuple[Callable[[], tuple[dict[str, nn.Module], Tensor, dict[str, Tensor]]], str]
] = {
    "different architectures": (bad_architecture, "different architectures"),
    "labels shorter than inputs": (short_labels, "5 samples but the inputs have 12"),
    "a task with labels but no network": (
        extra_labels,
        r"entries for task\(s\) \['C'\] that have no network",
    ),
    "a network without labels": (missing_labels, r"no entry for task\(s\) \['B'\]"),
    "fewer than 2 samples": (one_sample, "B >= 2"),
    "NaN activations": (nan_weights, "network 'B' after layer '4' are NaN"),
    "a task name with a dot": (bad_task_name, "task name 'a.b'"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_clear_error_and_leaves_the_networks(case: str) -> None:
    build, message = BAD_INPUTS[case]
    networks, x, labels = build()
    before = snapshot(networks)
    with pytest.raises(ValueError, match=message):
        PAMMerger(alpha_conv=0.1, alpha_fc=0.1).merge(networks, x, labels)
    assert_unchanged(networks, before)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"alpha_conv": -0.1}, ValueError, r"alpha_conv must be in \[0.0, inf\], got -0.1"),
        ({"alpha_fc": "0.1"}, TypeError, "alpha_fc must be a float"),
        ({"sigma2": 0}, ValueError, "sigma2"),
        (
            {"grouping": "pairs"},
            ValueError,
            r"grouping must be one of \['paper', 'subsets'\], got 'pairs'",
        ),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"layers": "0"}, TypeError, "layers"),
    ],
)
def test_pam_options_are_validated(
    options: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        PAMMerger(**options)  # type: ignore[arg-type]


def test_mergers_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PAMMerger().alpha_conv = 0.5  # type: ignore[misc]
    assert PAMMerger(layers=["0"]).layers == ("0",)
    with pytest.raises(TypeError):
        PAMMerger(0.1)  # type: ignore[misc]  # options are keyword-only


# ---------------------------------------------------------------- MTZ


@pytest.mark.parametrize("factory", [lenet, mlp, resnet])
def test_mtz_zips_identical_networks_exactly(factory: Callable[..., nn.Module]) -> None:
    name = {lenet: "lenet", mlp: "mlp", resnet: "resnet"}[factory]
    network = factory(3, 0)
    networks = {"A": network, "B": factory(3, 0), "C": factory(3, 0)}
    x = inputs_for(name, 16)
    before = snapshot(networks)
    merged = MTZMerger(share=1.0).merge(networks, x).eval()
    assert_unchanged(networks, before)
    assert all(set(sizes) == {"shared"} for sizes in list(merged.group_sizes().values())[:-1])
    outputs, expected = merged(x), network(x)
    for task in networks:
        assert torch.allclose(outputs[task], expected, atol=1e-8, rtol=0)


def test_mtz_partial_sharing_changes_the_network() -> None:
    networks, x = networks_for("lenet"), inputs_for("lenet", 16)
    merged = MTZMerger(share=0.5).merge(networks, x).eval()
    sizes = merged.group_sizes()
    assert sizes["0"] == {"shared": 2, "A": 2, "B": 2}
    assert sizes["7"] == {"shared": 8, "A": 8, "B": 8}
    outputs = merged(x)
    assert not torch.allclose(outputs["A"], networks["A"](x), atol=1e-3)  # zipping is lossy here
    exclusive = MTZMerger(share=0.0).merge(networks, x).eval()(x)
    assert torch.allclose(exclusive["B"], networks["B"](x), atol=1e-9)


def test_mtz_bad_input_is_a_clear_error() -> None:
    networks, x, _ = nan_weights()
    before = snapshot(networks)
    with pytest.raises(ValueError, match="network 'B'"):
        MTZMerger().merge(networks, x)
    assert_unchanged(networks, before)
    with pytest.raises(ValueError, match="different architectures"):
        MTZMerger().merge(*bad_architecture()[:2])


def test_mtz_share_per_layer() -> None:
    networks, x = networks_for("lenet"), inputs_for("lenet", 16)
    sizes = MTZMerger(share={"0": 1.0, "3": 0.5}).merge(networks, x).group_sizes()
    assert sizes["0"] == {"shared": 4} and sizes["3"] == {"shared": 3, "A": 3, "B": 3}
    assert sizes["7"] == {"A": 16, "B": 16}
    with pytest.raises(ValueError, match="unknown layer"):
        MTZMerger(share={"conv9": 1.0}).merge(networks, x)
    with pytest.raises(ValueError, match="share"):
        MTZMerger(share=1.5)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), positions=st.integers(1, 3))
def test_zip_costs_are_nonnegative_and_zero_for_equal_weights(seed: int, positions: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(4, positions, 3, generator=generator, dtype=torch.float64)
    b = torch.cat([a[:2], torch.randn(3, positions, 3, generator=generator, dtype=torch.float64)])
    samples = torch.randn(2, 20, 3, generator=generator, dtype=torch.float64)
    h_a, h_b = (s.T @ s / 20 for s in samples)
    costs = zip_costs(a, b, h_a[None], h_b[None])
    assert costs.shape == (4, 5)
    assert (costs >= -1e-9).all()
    assert torch.allclose(costs.diagonal()[:2], torch.zeros(2, dtype=torch.float64), atol=1e-9)
