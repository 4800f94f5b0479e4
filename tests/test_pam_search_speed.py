"""The fast greedy search (constants scored once, kernels laid out ``(B, B, n)``) equals the naive one.

``irrelevant_set(..., incremental=False)`` recomputes every candidate's distances
from its set's activations; the incremental search must pick the same neurons
in the same order on random inputs with dead (constant) neurons, duplicated
neurons (exact ties: the lowest index wins), quantised values, every depth,
class and multi-label targets, tiny and chunked kernel budgets.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from pam_plugin import irrelevant_path, irrelevant_set


def features_for(
    count: int, neurons: int, depth: int, dead: int, duplicates: int, levels: int, seed: int
) -> Tensor:
    """``(count, neurons, depth)`` float64: random, then ``dead`` constant and ``duplicates`` copied neurons."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.rand(neurons, 1, generator=generator, dtype=torch.float64)
    values = torch.rand(count, neurons, depth, generator=generator, dtype=torch.float64) * scale
    if levels:
        values = torch.round(values * levels) / levels
    order = torch.randperm(neurons, generator=generator).tolist()
    for i in order[:dead]:
        values[:, i, :] = float(torch.randint(-1, 2, (), generator=generator))
    for i in order[dead : dead + duplicates]:
        values[:, i, :] = values[:, int(torch.randint(0, neurons, (), generator=generator)), :]
    return values


def labels_for(count: int, classes: int, multilabel: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed + 1)
    if multilabel:
        return torch.randint(0, 2, (count, multilabel), generator=generator)
    return torch.randint(0, classes, (count,), generator=generator)


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(2, 14),
    neurons=st.integers(1, 9),
    depth=st.integers(1, 3),
    dead=st.integers(0, 4),
    duplicates=st.integers(0, 3),
    levels=st.sampled_from([0, 0, 2, 4]),
    classes=st.integers(1, 4),
    multilabel=st.sampled_from([0, 0, 1, 3]),
    alpha=st.one_of(st.floats(0.0, 0.6), st.just(10.0)),
    seed=st.integers(0, 10_000),
)
def test_incremental_equals_naive_with_constants_duplicates_and_ties(
    count: int, neurons: int, depth: int, dead: int, duplicates: int, levels: int,
    classes: int, multilabel: int, alpha: float, seed: int,
) -> None:  # fmt: skip
    features = features_for(count, neurons, depth, dead, duplicates, levels, seed)
    labels = labels_for(count, classes, multilabel, seed)
    fast, fast_path = irrelevant_path(features, labels, alpha=alpha, dtype=torch.float64)
    naive, naive_path = irrelevant_path(
        features, labels, alpha=alpha, dtype=torch.float64, incremental=False
    )
    chunked = irrelevant_set(
        features, labels, alpha=alpha, dtype=torch.float64, max_memory=count * count * 8
    )
    assert fast == naive == chunked
    assert fast_path == pytest.approx(naive_path, abs=1e-9)
    if alpha == 10.0:
        assert sorted(fast) == list(range(neurons))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float32_search_on_relu_pooled_features_equals_naive(seed: int) -> None:
    """What PAM sees: post-ReLU maxima, a third of the channels dead, 10 classes, float32."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.relu(torch.randn(48, 60, 1, generator=generator) * 0.3 - 0.1)
    features[:, torch.randperm(60, generator=generator)[:20], :] = 0.0
    labels = torch.randint(0, 10, (48,), generator=generator)
    for alpha in (0.01, 0.1, 0.5):
        fast = irrelevant_set(features, labels, alpha=alpha)
        assert fast == irrelevant_set(features, labels, alpha=alpha, incremental=False)
        assert fast == irrelevant_set(features, labels, alpha=alpha, max_memory=48 * 48 * 4 * 7)


def test_only_constant_neurons_are_taken_in_index_order_without_rescoring() -> None:
    features = torch.zeros(8, 5, dtype=torch.float64)
    features[:, 1] = 3.0
    features[:, 3] = -2.0
    labels = torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])
    chosen, path = irrelevant_path(features, labels, alpha=1e-9, dtype=torch.float64)
    assert chosen == [0, 1, 2, 3, 4]
    assert path == pytest.approx([0.0] * 5, abs=1e-12)
    assert chosen == irrelevant_set(
        features, labels, alpha=1e-9, dtype=torch.float64, incremental=False
    )


def test_a_nan_neuron_is_skipped_like_the_naive_search_skips_it() -> None:
    generator = torch.Generator().manual_seed(5)
    features = torch.rand(12, 4, generator=generator, dtype=torch.float64) * 0.2
    features[3, 2] = math.nan
    labels = torch.randint(0, 2, (12,), generator=generator)
    fast = irrelevant_set(features, labels, alpha=10.0, dtype=torch.float64)
    assert fast == irrelevant_set(
        features, labels, alpha=10.0, dtype=torch.float64, incremental=False
    )
    assert 2 not in fast and len(fast) == 3
    for incremental in (True, False):  # an infinite alpha takes every other neuron once
        every = irrelevant_set(
            features, labels, alpha=math.inf, dtype=torch.float64, incremental=incremental
        )
        assert sorted(every) == [0, 1, 3]


def test_one_sample_one_neuron() -> None:
    features = torch.tensor([[[0.5]]])
    labels = torch.tensor([0])
    assert irrelevant_set(features, labels, alpha=0.0) == [0]
    assert irrelevant_set(features, labels, alpha=0.0, incremental=False) == [0]


# ---------------------------------------------------------------- the benchmark part


def test_layer_features_stop_at_the_layer_and_match_a_truncated_forward() -> None:
    from benchmarks.pam_speed import layer_features, vgg16

    network = vgg16(10, 32, 0)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        head = nn.Sequential(*list(network.children())[:25])
        expected = torch.relu(head(x)).flatten(2).amax(dim=2).unsqueeze(-1)
    assert torch.equal(layer_features(network, "24", x), expected)


def test_pam_speed_part_measures_a_reduced_setting_without_a_goal() -> None:
    from benchmarks.pam_speed import PART, PAMSpeedConfig, search_headline

    config = PART.configure({"samples": 16, "channels": 6, "repeats": 2, "alpha": 0.2})
    assert isinstance(config, PAMSpeedConfig) and config.threads == 1
    threads = torch.get_num_threads()
    metrics = PART.run(config, seed=0, progress=False)
    assert torch.get_num_threads() == threads
    assert metrics["neurons"] == 12 and metrics["samples"] == 16 and len(metrics["ratios"]) == 2
    assert metrics["ratio"] > 0 and metrics["config"]["channels"] == 6
    (entry,) = PART.headline(metrics)
    assert entry["id"] == "pam.search.speedup" and entry["goal"] is None
    assert entry["value"] == round(metrics["ratio"], 1) and entry["setting"]["neurons"] == 12
    assert "speed-up" in PART.render(metrics) and "reduced" in PART.render(metrics)
    assert "faster than naive" in PART.summary(metrics)[0]
    claim = search_headline({**metrics, "neurons": 1024, "samples": 128})
    assert claim[0]["goal"] == ">= 50"


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"layer": "25"}, "layer"),
        ({"layer": "5", "channels": 256}, "channels"),
        ({"samples": 1}, "samples"),
        ({"repeats": 0}, "repeats"),
        ({"alpha": -1.0}, "alpha"),
        ({"threads": 0}, "threads"),
    ],
)
def test_pam_speed_config_rejects_bad_values(settings: dict, match: str) -> None:
    from benchmarks.pam_speed import PAMSpeedConfig

    with pytest.raises((TypeError, ValueError), match=match):
        PAMSpeedConfig(**settings)
