"""Correlated attribute groups on one kind of image (CelebA-style), from the procedural scenes.

PAM's experiments (He et al. 2021) merge single-task networks trained on
groups of correlated attributes of the same faces (CelebA, LFW). The offline
stand-in: every image is a scene of :func:`benchmarks.scenes.make_scenes`
(``size`` px, default 32), and each task is a **group of binary attributes**
of that scene (task type ``"multilabel"``: ``targets[task]: (N, L)`` float
0/1, like :func:`benchmarks.formats.load_celeba`; loss BCE-with-logits and
accuracy of ``logit > 0`` over the group's labels, both from
:mod:`benchmarks.data` / :func:`benchmarks.training.evaluate`). Every image
has every label, so single-task networks train on all images.

Groups (:data:`ATTRIBUTE_GROUPS`; each label's definition in
:data:`ATTRIBUTE_LABELS`, recorded in ``TaskData.config``; "visible" = at
least one pixel; "largest" = the object covering the most pixels):

=======  ===========================================================
warm     has_red, has_orange, has_yellow (a visible object of the colour)
cool     has_green, has_cyan, has_blue, has_purple
count    count_ge3, count_ge4, count_ge5 (visible objects)
largest  largest_warm, largest_cool (its colour), largest_big (>= 1/8 of the image)
layout   largest_right (its centroid right of centre), two_lights, has_white
=======  ===========================================================

Why these: at 32 px a small 4-conv network learns colours, counts and sizes,
but hardly shapes (measured, test accuracy after 8-12 epochs on 4000 images,
widths 16, 2 or 4 stages: ``has_<shape>`` and "largest is round/angular"
between 9 points below and 12 points above the base rate, colours about 30
points above), so shape groups would be near-untrainable tasks.

Measured on the default config, seed 0 (train 6000 + test 2000 = 8000
scenes). Base rates: has_<colour> 0.37-0.39 each (white 0.39); count_ge3 /
ge4 / ge5 0.77 / 0.53 / 0.31; largest_warm 0.38, largest_cool 0.50,
largest_big 0.47; largest_right 0.50, two_lights 0.50. Pearson correlation
of labels, max |r| over label pairs between two groups (within a group on the
diagonal): warm-cool 0.08, warm-count 0.21, warm-largest 0.24 (has_red ·
largest_warm), warm-layout 0.07, cool-count 0.20, cool-largest 0.18,
cool-layout 0.07, count-largest 0.10, count-layout 0.21 (count_ge4 ·
has_white), largest-layout 0.17; within warm 0.08, cool 0.07, count 0.63,
largest 0.77 (largest_warm · largest_cool, negative), layout 0.01. Colours
are drawn per object independently of shape and of each other, so groups
correlate through the object count and the largest object, and every group
reads the same colour and object features of the image: the CelebA shape
(correlated groups of one kind of image), with weaker label correlations.

Splits: train from generator seed ``100·seed + 11``, test from ``100·seed +
12`` (never the same scene); the PAM suite carves its validation images out
of train. Scenes are deterministic by seed (scene i depends only on the seed
and i), and the labelled tensors are cached under ``cache_dir`` as one
``.pt`` file keyed by a hash of the config (the scenes' own cache would also
store depth, normals and segmentation, ~3× the bytes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from benchmarks.data import Split, TaskData, TaskType

__all__ = [
    "ATTRIBUTE_GROUPS",
    "ATTRIBUTE_LABELS",
    "attribute_labels",
    "scene_attribute_tasks",
]

ATTRIBUTE_VERSION = 1
"""Bumped whenever the same config would give different tensors (it keys the cache)."""

ATTRIBUTE_GROUPS: dict[str, tuple[str, ...]] = {
    "warm": ("has_red", "has_orange", "has_yellow"),
    "cool": ("has_green", "has_cyan", "has_blue", "has_purple"),
    "count": ("count_ge3", "count_ge4", "count_ge5"),
    "largest": ("largest_warm", "largest_cool", "largest_big"),
    "layout": ("largest_right", "two_lights", "has_white"),
}
"""Task → its binary attributes, in output order."""

BIG_FRACTION = 1 / 8
"""``largest_big``: the largest visible object covers at least this fraction of the image."""

WARM, COOL = ("red", "orange", "yellow"), ("green", "cyan", "blue", "purple")

ATTRIBUTE_LABELS: dict[str, str] = {
    **{
        f"has_{c}": f"a visible object (>= 1 pixel) has the colour {c}"
        for c in (*WARM, *COOL, "white")
    },
    **{f"count_ge{k}": f"at least {k} objects are visible" for k in (3, 4, 5)},
    "largest_warm": "the object covering the most pixels is red, orange or yellow",
    "largest_cool": "the object covering the most pixels is green, cyan, blue or purple",
    "largest_big": f"the object covering the most pixels covers >= {BIG_FRACTION:g} of the image",
    "largest_right": "the largest object's pixel centroid is right of the image centre",
    "two_lights": "the room has two lights (else one)",
}
"""Label name → its definition from ``Scenes.attributes`` (the scenes module docstring)."""

RAW_ATTRIBUTES = ("count", "lights", "left_right", "object_colour", "object_pixels")
"""The ``Scenes.attributes`` the labels are computed from (what the cache stores)."""


def attribute_labels(scenes: Any) -> dict[str, Tensor]:
    """``{label: (N,) bool}`` of every label in :data:`ATTRIBUTE_LABELS`, from ``scenes.attributes``."""
    attributes: Mapping[str, Tensor] = scenes.attributes
    colours = list(scenes.colours)
    pixels, colour = attributes["object_pixels"], attributes["object_colour"]
    seen = pixels.sum(1) > 0
    largest = colour.gather(1, pixels.argmax(1, keepdim=True))[:, 0]  # ties: the lower slot

    def index(names: Sequence[str]) -> Tensor:
        return torch.tensor([colours.index(c) for c in names])

    labels = {f"has_{c}": ((colour == colours.index(c)) & (pixels > 0)).any(1)
              for c in (*WARM, *COOL, "white")}  # fmt: skip
    for k in (3, 4, 5):
        labels[f"count_ge{k}"] = attributes["count"] >= k
    labels["largest_warm"] = seen & torch.isin(largest, index(WARM))
    labels["largest_cool"] = seen & torch.isin(largest, index(COOL))
    image_pixels = scenes.image.shape[-1] * scenes.image.shape[-2]
    labels["largest_big"] = pixels.max(1).values >= BIG_FRACTION * image_pixels
    labels["largest_right"] = attributes["left_right"] == 1
    labels["two_lights"] = attributes["lights"] == 2
    return {name: labels[name] for name in ATTRIBUTE_LABELS}


def _check_groups(groups: Mapping[str, Sequence[str]] | None) -> dict[str, tuple[str, ...]]:
    if groups is None:
        return dict(ATTRIBUTE_GROUPS)
    if not isinstance(groups, Mapping) or not groups:
        raise TypeError(f"groups must be a non-empty mapping {{task: [labels]}}, got {groups!r}")
    checked: dict[str, tuple[str, ...]] = {}
    for task, names in groups.items():
        if isinstance(names, str) or not names or not isinstance(task, str):
            raise TypeError(f"groups[{task!r}] must be a non-empty list of labels, got {names!r}")
        unknown = [n for n in names if n not in ATTRIBUTE_LABELS]
        if unknown or len(set(names)) != len(names):
            raise ValueError(
                f"groups[{task!r}]={list(names)}: each label once, from {list(ATTRIBUTE_LABELS)}"
            )
        checked[task] = tuple(names)
    return checked


def scene_attribute_tasks(
    *,
    train: int = 6000,
    test: int = 2000,
    size: int = 32,
    seed: int = 0,
    groups: Mapping[str, Sequence[str]] | None = None,
    cache_dir: str | os.PathLike[str] | None = ".cache/cut-pam/scenes",
    **options: Any,
) -> TaskData:
    """Five CelebA-style multi-label tasks over the same scene images (see the module docstring).

    ``groups``: ``{task: [labels]}`` (default :data:`ATTRIBUTE_GROUPS`; labels
    from :data:`ATTRIBUTE_LABELS`). ``options`` go to ``make_scenes``
    (``texture``, ``noise``, ``min_objects``, ``max_objects``).
    """
    checked = _check_groups(groups)
    for name, n in (("train", train), ("test", test)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive number of images, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    unknown = sorted(set(options) - {"texture", "noise", "min_objects", "max_objects"})
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown}; make_scenes takes texture, noise, min_objects, max_objects"
        )
    made = {
        part: _cached_part(n, 100 * seed + offset, size, options, cache_dir)
        for part, n, offset in (("train", train, 11), ("test", test, 12))
    }

    def split(scenes: Any) -> Split:
        labels = attribute_labels(scenes)
        targets = {t: torch.stack([labels[n] for n in g], 1).float() for t, g in checked.items()}
        return Split(scenes.image, targets)

    types: dict[str, TaskType] = dict.fromkeys(checked, "multilabel")
    config = {
        "kind": "scene_attributes", "train": train, "test": test, "size": size, "seed": seed,
        "options": dict(sorted(options.items())), "groups": {t: list(g) for t, g in checked.items()},
        "labels": {n: ATTRIBUTE_LABELS[n] for g in checked.values() for n in g},
        "version": ATTRIBUTE_VERSION,
    }  # fmt: skip
    classes = {t: len(g) for t, g in checked.items()}
    return TaskData(
        "scene_attributes", split(made["train"]), split(made["test"]), classes, types, config
    )


def _cached_part(
    n: int,
    generator_seed: int,
    size: int,
    options: Mapping[str, Any],
    cache_dir: str | os.PathLike[str] | None,
) -> Any:
    """One split's images and the raw attributes the labels read: rendered, or from ``cache_dir``."""
    from benchmarks.scenes import GENERATOR_VERSION, cached_tensors, make_scenes

    config = {"n": n, "size": size, "seed": generator_seed, **dict(sorted(options.items())),
              "generator_version": GENERATOR_VERSION, "version": ATTRIBUTE_VERSION}  # fmt: skip

    def make() -> dict[str, Any]:
        scenes = make_scenes(n, size=size, seed=generator_seed, **options)
        kept = {k: scenes.attributes[k] for k in RAW_ATTRIBUTES}
        return {"config": config, "image": scenes.image, "attributes": kept,
                "colours": list(scenes.colours)}  # fmt: skip

    payload = cached_tensors(config, cache_dir, "scene-attributes", make)
    return SimpleNamespace(**{k: payload[k] for k in ("image", "attributes", "colours")})
