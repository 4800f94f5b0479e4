"""Scene attribute groups: labels read from the rendered scenes, deterministic, cached, multi-label."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks.attribute_data import (
    ATTRIBUTE_GROUPS,
    ATTRIBUTE_LABELS,
    attribute_labels,
    scene_attribute_tasks,
)
from benchmarks.data import load_data
from benchmarks.scenes import make_scenes
from benchmarks.training import evaluate

WARM, COOL = {"red", "orange", "yellow"}, {"green", "cyan", "blue", "purple"}


def literal_labels(scenes, i: int) -> dict[str, bool]:
    """Scene ``i``'s labels by hand, from its instance map (not from ``object_pixels``)."""
    instance = scenes.instance[i].long()
    size = instance.shape[-1]
    slots = [int(s) for s in instance.unique().tolist() if s >= 0]
    pixels = {s: int((instance == s).sum()) for s in slots}
    names = {s: scenes.colours[int(scenes.attributes["object_colour"][i, s])] for s in slots}
    largest = min(slots, key=lambda s: (-pixels[s], s)) if slots else None
    seen = set(names.values())
    labels = {f"has_{c}": c in seen for c in (*WARM, *COOL, "white")}
    labels.update({f"count_ge{k}": len(slots) >= k for k in (3, 4, 5)})
    if largest is None:
        labels.update(largest_warm=False, largest_cool=False, largest_big=False)
        labels["largest_right"] = False
    else:
        columns = torch.nonzero(instance == largest)[:, 1].float()
        labels["largest_warm"] = names[largest] in WARM
        labels["largest_cool"] = names[largest] in COOL
        labels["largest_big"] = pixels[largest] * 8 >= size * size
        labels["largest_right"] = bool(columns.mean() >= (size - 1) / 2)
    labels["two_lights"] = int(scenes.attributes["lights"][i]) == 2
    return labels


def test_labels_equal_the_attributes_they_are_defined_from() -> None:
    scenes = make_scenes(12, size=32, seed=5)
    labels = attribute_labels(scenes)
    assert list(labels) == list(ATTRIBUTE_LABELS)
    for i in range(len(scenes)):
        expected = literal_labels(scenes, i)
        assert {name: bool(value[i]) for name, value in labels.items()} == expected
    # not a constant: every label takes both values somewhere in a small set
    varied = make_scenes(60, size=32, seed=6)
    assert all(0 < int(v.sum()) < 60 for v in attribute_labels(varied).values())


def test_tasks_are_multilabel_groups_over_the_same_images() -> None:
    data = scene_attribute_tasks(train=10, test=6, seed=1, cache_dir=None)
    assert data.task_names == tuple(ATTRIBUTE_GROUPS)
    assert data.input_shape == (3, 32, 32)
    assert data.train.inputs.dtype == torch.float32
    labels = attribute_labels(make_scenes(10, size=32, seed=111))
    for task, names in ATTRIBUTE_GROUPS.items():
        assert data.task_types[task] == "multilabel"
        assert data.num_classes[task] == len(names)
        target = data.train.targets[task]
        assert target.shape == (10, len(names)) and target.dtype == torch.float32
        assert torch.equal(target, torch.stack([labels[n] for n in names], 1).float())
        assert data.test.targets[task].shape == (6, len(names))
    assert data.config["groups"] == {t: list(g) for t, g in ATTRIBUTE_GROUPS.items()}
    assert set(data.config["labels"]) == set(ATTRIBUTE_LABELS)
    # one loss path: BCE-with-logits for every group; evaluate scores each label
    logits = torch.randn(10, 3)
    losses = data.losses()
    assert torch.equal(
        losses["warm"](logits, data.train.targets["warm"]),
        F.binary_cross_entropy_with_logits(logits, data.train.targets["warm"]),
    )
    assert set(evaluate(torch.nn.Sequential(torch.nn.Flatten(), _Heads()), data)) == set(
        ATTRIBUTE_GROUPS
    )


class _Heads(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {t: x[:, : len(g)] - 0.5 for t, g in ATTRIBUTE_GROUPS.items()}


def test_same_seed_same_data_other_seed_other_scenes_and_the_cache_agrees(tmp_path: Path) -> None:
    first = load_data("scene_attributes", train=8, test=4, seed=2, cache_dir=tmp_path)
    files = sorted(tmp_path.glob("scene-attributes-*.pt"))
    assert len(files) == 2  # train and test
    again = load_data("scene_attributes", train=8, test=4, seed=2, cache_dir=tmp_path)
    fresh = scene_attribute_tasks(train=8, test=4, seed=2, cache_dir=None)
    for other in (again, fresh):
        assert torch.equal(first.train.inputs, other.train.inputs)
        assert all(
            torch.equal(first.test.targets[t], other.test.targets[t]) for t in first.task_names
        )
    assert sorted(tmp_path.glob("scene-attributes-*.pt")) == files
    other_seed = scene_attribute_tasks(train=8, test=4, seed=3, cache_dir=None)
    assert not torch.equal(first.train.inputs, other_seed.train.inputs)
    assert not torch.equal(first.train.inputs[:4], first.test.inputs)  # train and test differ


def test_custom_groups_and_bad_input_name_the_fix() -> None:
    data = scene_attribute_tasks(
        train=4, test=2, groups={"size": ["largest_big"]}, cache_dir=None, texture=False
    )
    assert data.num_classes == {"size": 1} and data.config["options"] == {"texture": False}
    with pytest.raises(ValueError, match="has_sphere"):
        scene_attribute_tasks(train=4, test=2, groups={"round": ["has_sphere"]}, cache_dir=None)
    with pytest.raises(TypeError, match="unknown option"):
        scene_attribute_tasks(train=4, test=2, colour=True, cache_dir=None)
    with pytest.raises(ValueError, match="train"):
        scene_attribute_tasks(train=0, cache_dir=None)
