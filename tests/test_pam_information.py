"""The KDE mutual-information bound and the greedy irrelevant-set search."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from pam_plugin import irrelevant_set, label_entropy, mutual_information
from pam_plugin.information import (
    LabelStructure,
    check_labels,
    information_from_distances,
    squared_distances,
)


def literal_information(features: list[list[float]], labels: list[int], sigma2: float) -> float:
    """A literal port of the official PAM code: H(Z) with its constants, I = H(Z) − Σ_v p(v) H(Z | y=v)."""

    def entropy(rows: list[list[float]]) -> float:
        count, dim = len(rows), len(rows[0])
        total = 0.0
        for z_i in rows:
            inner = 0.0
            for z_j in rows:
                distance = sum((a - b) ** 2 for a, b in zip(z_i, z_j, strict=True))
                inner += math.exp(-distance / (2 * sigma2))
            total += math.log(inner / count)
        return dim / 2 + dim / 2 * math.log(2 * math.pi * sigma2) - total / count

    conditional = 0.0
    for value in sorted(set(labels)):
        rows = [z for z, y in zip(features, labels, strict=True) if y == value]
        conditional += len(rows) / len(labels) * entropy(rows)
    return entropy(features) - conditional


def literal_multilabel(
    features: list[list[float]], labels: list[list[int]], sigma2: float
) -> float:
    return sum(
        literal_information(features, [row[k] for row in labels], sigma2)
        for k in range(len(labels[0]))
    )


samples = st.integers(min_value=2, max_value=9)


@settings(max_examples=25, deadline=None)
@given(
    count=samples,
    dim=st.integers(1, 3),
    classes=st.integers(1, 3),
    sigma2=st.sampled_from([0.1, 0.5]),
    seed=st.integers(0, 10_000),
)
def test_fast_information_matches_the_literal_formula(
    count: int, dim: int, classes: int, sigma2: float, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    features = torch.rand(count, dim, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, classes, (count,), generator=generator)
    expected = literal_information(features.tolist(), labels.tolist(), sigma2)
    assert mutual_information(features, labels, sigma2=sigma2) == pytest.approx(expected, abs=1e-9)


@settings(max_examples=20, deadline=None)
@given(count=samples, num_labels=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_multilabel_information_is_the_sum_over_labels(
    count: int, num_labels: int, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    features = torch.rand(count, 2, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 2, (count, num_labels), generator=generator)
    expected = literal_multilabel(features.tolist(), labels.tolist(), 0.1)
    assert mutual_information(features, labels) == pytest.approx(expected, abs=1e-9)


def test_label_copy_scores_high_random_neuron_near_zero() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (200,), generator=generator)
    copy = labels.double()[:, None] * 3.0
    noise = torch.rand(200, 1, generator=generator, dtype=torch.float64)
    entropy = label_entropy(labels)
    assert mutual_information(copy, labels) == pytest.approx(entropy, abs=1e-3)
    assert abs(mutual_information(noise, labels)) < 0.05 * entropy


@settings(max_examples=25, deadline=None)
@given(count=samples, classes=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_information_never_exceeds_the_label_entropy(count: int, classes: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    features = torch.rand(count, 3, generator=generator, dtype=torch.float64) * 5
    labels = torch.randint(0, classes, (count,), generator=generator)
    assert mutual_information(features, labels) <= label_entropy(labels) + 1e-12


@settings(max_examples=25, deadline=None)
@given(count=samples, classes=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_information_does_not_fall_when_a_label_informative_neuron_joins(
    count: int, classes: int, seed: int
) -> None:
    """The set grows by a neuron constant within each class: I(Z_S) <= I(Z_{S ∪ {i}})."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.rand(count, 2, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, classes, (count,), generator=generator)
    class_values = torch.rand(classes, generator=generator, dtype=torch.float64)
    grown = torch.cat([features, class_values[labels][:, None]], dim=1)
    assert mutual_information(grown, labels) >= mutual_information(features, labels) - 1e-12


def test_distances_add_up_over_neurons() -> None:
    features = torch.rand(7, 4, dtype=torch.float64)
    total = sum(squared_distances(features[:, [i]]) for i in range(4))
    assert torch.allclose(squared_distances(features), total)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("labels", "error"),
    [
        (torch.tensor([0.0, 1.0, 1.0]), TypeError),
        (torch.tensor([0, 1]), ValueError),
        (torch.tensor([[0, 2], [1, 0], [0, 0]]), ValueError),
        (torch.zeros(3, 1, 1, dtype=torch.long), ValueError),
    ],
)
def test_bad_labels_are_rejected(labels: Tensor, error: type[Exception]) -> None:
    with pytest.raises(error, match="labels"):
        check_labels(labels, 3)


# ---------------------------------------------------------------- search


@settings(max_examples=20, deadline=None)
@given(
    count=st.integers(4, 12),
    neurons=st.integers(2, 6),
    depth=st.integers(1, 2),
    alpha=st.floats(0.0, 0.4),
    multilabel=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_incremental_search_equals_the_naive_search(
    count: int, neurons: int, depth: int, alpha: float, multilabel: bool, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    scale = torch.rand(neurons, 1, generator=generator, dtype=torch.float64)
    features = torch.rand(count, neurons, depth, generator=generator, dtype=torch.float64) * scale
    shape = (count, 2) if multilabel else (count,)
    labels = torch.randint(0, 2, shape, generator=generator)
    fast = irrelevant_set(features, labels, alpha=alpha, dtype=torch.float64)
    naive = irrelevant_set(features, labels, alpha=alpha, dtype=torch.float64, incremental=False)
    chunked = irrelevant_set(
        features, labels, alpha=alpha, dtype=torch.float64, max_memory=count * count * 8
    )
    assert fast == naive == chunked


@settings(max_examples=15, deadline=None)
@given(alpha=st.floats(0.0, 0.6), seed=st.integers(0, 10_000))
def test_search_respects_alpha_and_stops_only_when_every_candidate_exceeds_it(
    alpha: float, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (16,), generator=generator)
    features = torch.rand(16, 8, generator=generator, dtype=torch.float64) * torch.linspace(
        0.05, 2, 8
    )
    chosen = irrelevant_set(features, labels, alpha=alpha, dtype=torch.float64)
    structure = LabelStructure(check_labels(labels, 16), torch.float64)

    def information(indices: list[int]) -> float:
        return float(information_from_distances(squared_distances(features[:, indices]), structure))

    assert len(set(chosen)) == len(chosen)
    if chosen:
        assert information(chosen) <= alpha + 1e-12
    for candidate in set(range(8)) - set(chosen):
        assert information([*chosen, candidate]) > alpha


def test_label_copy_is_never_irrelevant() -> None:
    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 2, (32,), generator=generator)
    features = torch.rand(32, 6, generator=generator) * 0.05
    features[:, 4] = labels.float() * 2
    chosen = irrelevant_set(features, labels, alpha=0.05)
    assert 4 not in chosen and len(chosen) == 5


def test_search_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="alpha"):
        irrelevant_set(torch.rand(4, 2), torch.tensor([0, 1, 0, 1]), alpha=float("nan"))
    with pytest.raises(ValueError, match="sigma2"):
        irrelevant_set(torch.rand(4, 2), torch.tensor([0, 1, 0, 1]), alpha=0.1, sigma2=0.0)
