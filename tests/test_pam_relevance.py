"""PAM's relative relevance rule: scale-free per-neuron relevance, per-layer reference, no drops."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from pam_plugin import PAMMerger, mutual_information, neuron_relevance
from pam_plugin import relevance as relevance_module
from pam_plugin.relevance import relative_irrelevant
from tests.test_pam_mergers import labels_for
from tests.test_pam_networks import assert_unchanged, inputs_for, networks_for, snapshot


def _labels(count: int, classes: int = 3, seed: int = 0) -> Tensor:
    return torch.randint(0, classes, (count,), generator=torch.Generator().manual_seed(seed))


def test_relevance_is_scale_free_where_the_set_bound_saturates() -> None:
    y = _labels(96)
    noise = torch.randn(96, generator=torch.Generator().manual_seed(1))
    informative = y.double() + 0.05 * noise  # separates the classes
    features = torch.stack([informative, noise, torch.full((96,), 2.5)], dim=1)
    scores = neuron_relevance(features, y)
    assert scores[0] > 0.8 and scores[1] < 0.3 and scores[2] == 0.0
    assert torch.allclose(neuron_relevance(features * 1000.0, y), scores, atol=1e-9)
    # the paper's bound on the raw values: at a large scale even pure noise reaches H(Y)
    assert mutual_information((noise * 1000.0)[:, None], y) > 0.95 * mutual_information(
        informative[:, None] * 1000.0, y
    )


@settings(max_examples=10, deadline=None)
@given(neurons=st.integers(1, 9), values=st.integers(1, 3), chunk=st.integers(1, 5))
def test_relevance_chunks_and_multilabel_agree(neurons: int, values: int, chunk: int) -> None:
    generator = torch.Generator().manual_seed(neurons * 10 + values)
    features = torch.randn(24, neurons, values, generator=generator)
    labels = torch.randint(0, 2, (24, 2), generator=generator)
    whole = neuron_relevance(features, labels)
    assert whole.shape == (neurons,) and bool(((whole >= 0) & (whole <= 1)).all())
    one = neuron_relevance(features[:, :1], labels)
    assert torch.allclose(one, whole[:1])
    original = relevance_module.CHUNK_ELEMENTS
    try:
        relevance_module.CHUNK_ELEMENTS = chunk * 3 * 24 * 24  # `chunk` neurons at a time
        assert torch.allclose(neuron_relevance(features, labels), whole)
    finally:
        relevance_module.CHUNK_ELEMENTS = original


def test_relative_rule_shares_generic_and_keeps_specific_neurons_exclusive() -> None:
    generator = torch.Generator().manual_seed(3)
    ya, yb = _labels(128, seed=4), _labels(128, seed=5)  # independent tasks
    both = ya.double() * 3 + yb.double()  # a generic neuron: informative about both

    def neuron(signal: Tensor) -> Tensor:
        return signal + 0.05 * torch.randn(128, generator=generator)

    network_a = torch.stack([neuron(ya.double()), neuron(ya.double()), neuron(both)], dim=1)
    network_b = torch.stack([neuron(yb.double()), neuron(yb.double()), neuron(both)], dim=1)
    pooled = torch.cat([network_a, network_b], dim=1)[:, :, None]
    irrelevant = relative_irrelevant(pooled, {"A": ya, "B": yb}, ["A", "B"], threshold=0.3)
    assert irrelevant == {"A": [3, 4], "B": [0, 1]}  # the generic neurons 2 and 5 are shared
    # a neuron is never irrelevant to its own task, even at a huge threshold
    assert relative_irrelevant(pooled, {"A": ya, "B": yb}, ["A", "B"], threshold=1e9) == {
        "A": [3, 4, 5],
        "B": [0, 1, 2],
    }
    with pytest.raises(ValueError, match="threshold"):
        relative_irrelevant(pooled, {"A": ya, "B": yb}, ["A", "B"], threshold=-1.0)
    with pytest.raises(ValueError, match="multiple of 4 tasks"):
        relative_irrelevant(pooled, {t: ya for t in "ABCD"}, list("ABCD"), threshold=0.5)


@pytest.mark.parametrize("name", ["lenet", "mlp", "resnet"])
def test_relative_merge_drops_nothing_and_is_exact_when_nothing_is_shared(name: str) -> None:
    networks = networks_for(name)
    x = inputs_for(name, 32)
    labels = labels_for(x)
    before = snapshot(networks)
    separate = PAMMerger(relevance="relative", relative_threshold=1e9).merge(networks, x, labels)
    assert_unchanged(networks, before)
    sizes = separate.group_sizes()
    assert all(set(groups) <= {"A", "B"} for groups in sizes.values())
    outputs = separate.eval()(x)
    for task, network in networks.items():
        torch.testing.assert_close(outputs[task], network.eval()(x))
    widths = {layer: sum(groups.values()) for layer, groups in sizes.items()}
    for grouping in ("paper", "subsets"):  # every neuron stays reachable from its output
        merger = PAMMerger(relevance="relative", relative_threshold=0.5, grouping=grouping)
        merged = merger.merge(networks, x, labels)  # type: ignore[arg-type]
        assert {layer: sum(g.values()) for layer, g in merged.group_sizes().items()} == widths


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"relevance": "joint"}, r"relevance must be one of \['set', 'relative'\]"),
        ({"relative_threshold": -0.5}, "relative_threshold"),
    ],
)
def test_relative_options_are_validated(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PAMMerger(**options)  # type: ignore[arg-type]
