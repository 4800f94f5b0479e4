"""Costs of task combinations (MACs, parameters) and joint retraining."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pam_plugin import (
    Cost,
    MergedNetwork,
    PAMMerger,
    build_merged,
    combination_costs,
    network_cost,
    retrain,
)
from tests.test_pam_networks import assert_unchanged, inputs_for, lenet, mlp, networks_for, snapshot


def partly_shared() -> tuple[MergedNetwork, torch.Tensor]:
    """An MLP pair, three tasks, with shared and exclusive groups in every hidden layer."""
    networks = {"A": mlp(3, 0), "B": mlp(4, 1), "C": mlp(2, 2)}
    groups_0 = {
        frozenset("ABC"): [((t, i),) for t in "ABC" for i in range(4)],
        **{frozenset(t): [((t, i),) for i in range(4, 12)] for t in "ABC"},
    }
    groups_4 = {
        frozenset("ABC"): [((t, i),) for t in "ABC" for i in range(3)],
        **{frozenset(t): [((t, i),) for i in range(3, 8)] for t in "ABC"},
    }
    x = inputs_for("mlp")
    return build_merged(networks, x, {"0": groups_0, "4": groups_4}), x


def test_lenet_cost_counts_conv_and_linear_macs() -> None:
    network = lenet()
    expected_macs = 16 * 16 * 4 * 25 + 4 * 4 * 6 * 4 * 25 + 24 * 16 + 16 * 3
    expected_params = sum(p.numel() for p in network.parameters())
    assert network_cost(network, inputs_for("lenet", 5)) == Cost(expected_macs, expected_params)
    network.train()
    network_cost(network, inputs_for("lenet", 5))
    assert network.training


def test_merged_costs_are_monotone_and_subadditive() -> None:
    merged, x = partly_shared()
    costs = combination_costs(merged, x[:2])
    assert len(costs) == 7
    for s, t in itertools.product(costs, repeat=2):
        union = costs[s | t]
        for field in ("macs", "params"):
            assert getattr(costs[s], field) <= getattr(union, field)
            assert getattr(union, field) <= getattr(costs[s], field) + getattr(costs[t], field)


def test_exclusive_groups_make_subsets_strictly_cheaper() -> None:
    merged, x = partly_shared()
    costs = combination_costs(merged, x[:2], tasks=["A", "B"])
    assert list(costs) == [frozenset("A"), frozenset("B"), frozenset("AB")]
    assert costs[frozenset("A")].macs < costs[frozenset("AB")].macs
    assert costs[frozenset("AB")].macs < network_cost(merged, x[:2]).macs  # C's groups are off
    assert costs[frozenset("AB")].macs < costs[frozenset("A")].macs + costs[frozenset("B")].macs


def test_independent_networks_cost_the_sum() -> None:
    networks = networks_for("lenet", ("A", "B", "C"))
    x = inputs_for("lenet", 3)
    single = {t: network_cost(n, x) for t, n in networks.items()}
    costs = combination_costs(networks, x)
    for combination, cost in costs.items():
        assert cost.macs == sum(single[t].macs for t in combination)
        assert cost.params == sum(single[t].params for t in combination)
    # merging without sharing costs what the networks cost side by side
    merged_costs = combination_costs(build_merged(networks, x), x)
    assert {c: v.macs for c, v in merged_costs.items()} == {c: v.macs for c, v in costs.items()}


def test_costs_reject_bad_tasks() -> None:
    merged, x = partly_shared()
    with pytest.raises(ValueError, match=r"unknown task\(s\) \[.Z.\]"):
        combination_costs(merged, x, tasks=["A", "Z"])
    with pytest.raises(TypeError, match="MergedNetwork"):
        combination_costs(nn.Linear(2, 2), x)  # type: ignore[arg-type]


# ---------------------------------------------------------------- retraining


def task_batches(
    x: torch.Tensor, merged: MergedNetwork
) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(0)
    classes = {t: merged(x[:1])[t].shape[1] for t in merged.tasks}
    targets = {
        t: torch.randint(0, c, (x.shape[0],), generator=generator) for t, c in classes.items()
    }
    return [
        (x[i : i + 6], {t: y[i : i + 6] for t, y in targets.items()})
        for i in range(0, x.shape[0], 6)
    ]


def total_loss(
    model: nn.Module, batches: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]
) -> float:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        total = sum(float(F.cross_entropy(model(x)[t], y[t])) for x, y in batches for t in y)
    model.train(was_training)
    return total


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_retrain_lowers_the_summed_loss_and_returns_a_copy(optimizer: str) -> None:
    x = inputs_for("lenet", 24)
    networks = networks_for("lenet")
    labels = {t: torch.randint(0, 3, (24,)) for t in "AB"}
    merged = PAMMerger(alpha_conv=0.01, alpha_fc=0.01).merge(networks, x, labels)
    batches = task_batches(x, merged)
    losses = {t: F.cross_entropy for t in merged.tasks}
    before = snapshot({"m": merged})
    start = total_loss(merged, batches)
    trained = retrain(
        merged, batches, losses, epochs=15, lr=0.01, optimizer=optimizer, progress=False
    )  # type: ignore[arg-type]
    assert trained is not merged and isinstance(trained, MergedNetwork)
    assert_unchanged({"m": merged}, before)
    assert total_loss(trained, batches) < start
    same = retrain(merged, batches, losses, max_steps=1, inplace=True, progress=False)
    assert same is merged
    assert not torch.equal(next(merged.parameters()), before["m"][1][next(iter(before["m"][1]))])


def test_retrain_rejects_bad_arguments() -> None:
    model = build_merged(networks_for("mlp"), inputs_for("mlp"))
    with pytest.raises(ValueError, match="optimizer"):
        retrain(model, [], {"A": F.cross_entropy}, optimizer="rmsprop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no batch"):
        retrain(model, [], {"A": F.cross_entropy}, progress=False)
    with pytest.raises(ValueError, match="lr"):
        retrain(model, [], {"A": F.cross_entropy}, lr=0.0)
