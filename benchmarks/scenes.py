"""Procedural indoor scenes with exact dense labels: a small vectorised ray-caster in plain torch.

The offline stand-in for NYUv2-style dense multi-task data (semantic segmentation, depth,
surface normals). :func:`make_scenes` renders ``n`` images and their labels; nothing is
downloaded and nothing happens at import.

Scene model
    A closed box room (floor, four walls, ceiling; every camera ray hits something, so there
    is no background class) holding ``min_objects``..``max_objects`` objects (uniform count)
    of five shapes: sphere; box (rotated about the vertical); cylinder (upright or lying);
    cone (upright); torus (lying, standing or tilted). Sizes, positions (resting on the
    floor, inside the camera's horizontal field of view, footprints kept apart when
    possible) and poses are random; objects may occlude each other and leave the frame.
    An object's colour is one of :data:`SCENE_COLOURS` (slightly jittered), drawn
    independently of its shape. The camera stands near the front wall (random position,
    yaw, downward pitch, small roll, horizontal field of view 50-75 degrees).
    Intersections are analytic (quadratics and slabs), except the torus, which is
    sphere-traced on its exact distance function to a 1 mm tolerance.

Shading
    Lambertian with an ambient term and 1-2 point lights near the ceiling (random
    position, intensity, tint, inverse-square-like falloff), hard shadows cast by the
    objects, optional procedural solid textures (checker, stripes, a marble-like pattern)
    that modulate brightness, additive Gaussian noise of std ``noise``, clipped to [0, 1].
    ``texture=False`` keeps the same geometry, colours and lights, without the patterns.

Labels (exact at each pixel centre, from the first hit)
    * ``seg``: index into :data:`SCENE_CLASSES` (``floor``, ``wall``, ``ceiling``, then
      the shapes).
    * ``depth``: the hit point's camera-frame z (distance along the optical axis), > 0.
    * ``normal``: the analytic unit surface normal in the camera frame, flipped to face
      the camera (``dot(normal, ray) < 0``).
    * ``instance``: the object slot (0..max_objects-1) whose surface is seen, -1 for the
      room; int8.

Frames. Camera frame (OpenCV): x right, y DOWN, z forward. Pixel (row v, column u) has
its centre at image coordinates (u, v), so the camera-frame point it sees is
``depth * inverse(K) @ (u, v, 1)`` with ``K = scenes.intrinsics[i]`` (see
:func:`backproject`). World frame (``camera_to_world``): right-handed, y up, the floor
is y = 0.

Attributes (``scenes.attributes``, each a tensor with N rows; "visible" = at least one
pixel):
    * ``count`` (N,) int64: number of visible objects.
    * ``placed`` (N,) int64: number of objects placed (visible or not).
    * ``has_<shape>`` (N,) bool, one per shape class: the class has at least one pixel.
    * ``dominant_colour`` (N,) int64: index into ``scenes.colours`` of the colour whose
      objects cover the most pixels (ties: the lower index); -1 when no object is seen.
    * ``largest_class`` (N,) int64: seg class of the object covering the most pixels (ties:
      the lower slot); -1 when no object is seen.
    * ``left_right`` (N,) int64: 0 when the largest object's pixel centroid column is left
      of the image centre ``(size - 1) / 2``, 1 otherwise; -1 when no object is seen.
    * ``lights`` (N,) int64: number of lights (1 or 2).
    * ``object_class`` (N, max_objects) int64: seg class of each slot, -1 for empty slots.
    * ``object_colour`` (N, max_objects) int64: colour index of each slot, -1 when empty.
    * ``object_pixels`` (N, max_objects) int64: visible pixels of each slot.

Determinism. Scene i is drawn from its own ``torch.Generator`` seeded by ``(seed, i)``
and rendered with elementwise operations only, so the output is reproducible and scene i
does not depend on ``n`` (``make_scenes(10)[:5]`` equals ``make_scenes(5)``).

Implementation notes: each chunk of scenes is rendered at once, vectors are kept as
triples of tensors (no matmul or reductions whose rounding could depend on the batch),
and textures use triangle waves instead of ``sin`` for the same reason. Rays are traced
against an object only where its bounding sphere may be hit (an image box for camera
rays, a cone from the light for shadow rays). Rendering runs with one intra-op thread
(restored afterwards): it is many small elementwise ops, for which a second thread gains
little and, on cores shared with other processes, costs 10-40x in waits.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.scene_geometry import (
    CHUNK_PIXELS,
    ROOM_CLASSES,
    SCENE_CLASSES,
    SCENE_COLOURS,
    SHAPE_CLASSES,
)
from benchmarks.scene_render import render
from benchmarks.scene_sampling import sample_scene

GENERATOR_VERSION = 1
"""Bumped whenever the same config would render different tensors (it keys the cache)."""


@dataclass(frozen=True, eq=False)
class Scenes:
    """Rendered scenes and their labels; index or slice it to get a smaller ``Scenes``.

    ``image: (N, 3, H, W)`` float32 in [0, 1]; ``seg: (N, H, W)`` int64;
    ``depth: (N, 1, H, W)`` float32 camera z; ``normal: (N, 3, H, W)`` float32 camera frame;
    ``instance: (N, H, W)`` int8; ``intrinsics: (N, 3, 3)``; ``camera_to_world: (N, 4, 4)``;
    ``attributes``: see the module docstring. ``config`` is the JSON-serialisable dict of
    the arguments that generated the full set (slicing keeps it).
    """

    image: Tensor
    seg: Tensor
    depth: Tensor
    normal: Tensor
    instance: Tensor
    intrinsics: Tensor
    camera_to_world: Tensor
    attributes: dict[str, Tensor]
    config: dict[str, Any]
    classes: list[str] = field(default_factory=lambda: list(SCENE_CLASSES))
    colours: list[str] = field(default_factory=lambda: list(SCENE_COLOURS))

    def __len__(self) -> int:
        return len(self.image)

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> Scenes:
        """The scenes at ``index`` (an int gives a ``Scenes`` of length 1)."""
        if isinstance(index, bool):
            raise TypeError("Scenes index must be an int, slice, sequence of ints or tensor")
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                raise IndexError(f"scene index {index} out of range for {len(self)} scenes")
            index = slice(index % len(self), index % len(self) + 1)
        elif not isinstance(index, slice | Tensor):
            index = torch.as_tensor(list(index), dtype=torch.long)
        return Scenes(
            image=self.image[index],
            seg=self.seg[index],
            depth=self.depth[index],
            normal=self.normal[index],
            instance=self.instance[index],
            intrinsics=self.intrinsics[index],
            camera_to_world=self.camera_to_world[index],
            attributes={k: v[index] for k, v in self.attributes.items()},
            config=dict(self.config),
            classes=list(self.classes),
            colours=list(self.colours),
        )


def backproject(depth: Tensor, intrinsics: Tensor) -> Tensor:
    """Camera-frame points ``(N, 3, H, W)`` seen at each pixel, from ``depth: (N, 1, H, W)``
    and ``intrinsics: (N, 3, 3)``."""
    n, _, h, w = depth.shape
    rows = torch.arange(h, dtype=depth.dtype).view(1, h, 1).expand(n, h, w)
    cols = torch.arange(w, dtype=depth.dtype).view(1, 1, w).expand(n, h, w)
    k = intrinsics.to(depth.dtype)
    fx, fy = k[:, 0, 0].view(n, 1, 1), k[:, 1, 1].view(n, 1, 1)
    cx, cy = k[:, 0, 2].view(n, 1, 1), k[:, 1, 2].view(n, 1, 1)
    z = depth[:, 0]
    return torch.stack([(cols - cx) / fx * z, (rows - cy) / fy * z, z], dim=1)


def make_scenes(
    n: int,
    *,
    size: int = 64,
    seed: int = 0,
    texture: bool = True,
    noise: float = 0.02,
    min_objects: int = 2,
    max_objects: int = 6,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Scenes:
    """Render ``n`` random scenes of ``size`` x ``size`` pixels (see the module docstring).

    With ``cache_dir``, the result is stored there as one ``.pt`` file keyed by a hash of
    the config and :data:`GENERATOR_VERSION`, and loaded from it next time.
    """
    config = _checked_config(n, size, seed, texture, noise, min_objects, max_objects)

    def generate() -> dict[str, Any]:
        scenes = _generate(config)
        return {k: getattr(scenes, k) for k in scenes.__dataclass_fields__}

    return Scenes(**cached_tensors(config, cache_dir, "scenes", generate))


def cached_tensors(
    config: dict[str, Any],
    cache_dir: str | os.PathLike[str] | None,
    prefix: str,
    make: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """``make()`` (a dict of tensors holding ``config`` under ``"config"``), cached on disk.

    Stored in ``cache_dir`` as ``<prefix>-<hash of config>.pt`` (written to a temporary
    file, then renamed); loaded next time when the stored ``config`` equals ``config``.
    A corrupt or foreign file is regenerated, not trusted. ``cache_dir=None``: no cache.
    """
    if cache_dir is None:
        return make()
    if not isinstance(cache_dir, str | os.PathLike):
        raise TypeError(f"cache_dir must be a path or None, got {type(cache_dir).__name__}")
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"{prefix}-{digest}.pt"
    if path.exists():
        try:
            payload = torch.load(path, weights_only=True)
            if payload.get("config") == config:
                return payload
        except Exception:  # a corrupt or foreign file is regenerated, not trusted
            pass
    payload = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(payload, handle)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return payload


def _checked_config(
    n: Any, size: Any, seed: Any, texture: Any, noise: Any, min_objects: Any, max_objects: Any
) -> dict[str, Any]:
    def integer(name: str, value: Any, low: int, high: int, fix: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
        if not low <= value <= high:
            raise ValueError(f"{name}={value} is out of range [{low}, {high}]; {fix}")
        return value

    integer("n", n, 1, 10**8, "ask for at least one scene (n >= 1)")
    integer("size", size, 16, 1024, "use an image size between 16 and 1024 pixels, e.g. 64")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
    if not isinstance(texture, bool):
        raise TypeError(f"texture must be True or False, got {texture!r}")
    if isinstance(noise, bool) or not isinstance(noise, int | float):
        raise TypeError(f"noise must be a float, got {noise!r} ({type(noise).__name__})")
    if not (math.isfinite(noise) and 0 <= noise <= 1):
        raise ValueError(f"noise={noise} must be a finite std in [0, 1]; use e.g. 0.02 (0 = off)")
    integer("min_objects", min_objects, 0, 12, "use 0 <= min_objects <= 12")
    integer("max_objects", max_objects, 1, 12, "use 1 <= max_objects <= 12")
    if min_objects > max_objects:
        raise ValueError(
            f"min_objects={min_objects} > max_objects={max_objects}; "
            "lower min_objects or raise max_objects"
        )
    return {
        "n": n,
        "size": size,
        "seed": seed,
        "texture": texture,
        "noise": float(noise),
        "min_objects": min_objects,
        "max_objects": max_objects,
        "version": GENERATOR_VERSION,
    }


# ---------------------------------------------------------------- per-scene parameters


def _attributes(
    instance: Tensor, seg: Tensor, kinds: Tensor, colours: Tensor, lights: Tensor
) -> dict[str, Tensor]:
    b, slots = kinds.shape
    flat = instance.reshape(b, -1)
    seen = flat >= 0
    pixels = torch.zeros(b, slots + 1, dtype=torch.long).scatter_add_(
        1, flat.clamp(min=-1) + 1, seen.long()
    )[:, 1:]
    object_class = torch.where(kinds >= 0, kinds + len(ROOM_CLASSES), -1)
    by_colour = torch.zeros(b, len(SCENE_COLOURS), dtype=torch.long)
    by_colour.scatter_add_(1, colours.clamp(min=0), torch.where(colours >= 0, pixels, 0))
    any_seen = pixels.sum(1) > 0
    largest = pixels.argmax(1)
    cols = (torch.arange(flat.shape[1]) % seg.shape[-1]).float()
    mine = flat == largest[:, None]
    centroid = (cols * mine).sum(1) / mine.sum(1).clamp(min=1)
    attributes = {
        "count": (pixels > 0).sum(1),
        "placed": (kinds >= 0).sum(1),
    }
    classes = seg.reshape(b, -1)
    for index, name in enumerate(SHAPE_CLASSES):
        attributes[f"has_{name}"] = (classes == index + len(ROOM_CLASSES)).any(1)
    minus = torch.full((b,), -1, dtype=torch.long)
    attributes["dominant_colour"] = torch.where(any_seen, by_colour.argmax(1), minus)
    attributes["largest_class"] = torch.where(
        any_seen, object_class.gather(1, largest[:, None])[:, 0], minus
    )
    attributes["left_right"] = torch.where(
        any_seen, (centroid >= (seg.shape[-1] - 1) / 2).long(), minus
    )
    attributes["lights"] = lights
    attributes["object_class"] = object_class
    attributes["object_colour"] = colours
    attributes["object_pixels"] = pixels
    return attributes


def _render_into(
    parts: dict[str, list[Any]], config: dict[str, Any], start: int, stop: int
) -> None:
    """Render scenes ``start..stop-1`` and append their tensors to ``parts``."""
    size, slots = config["size"], config["max_objects"]
    batch = [sample_scene(config["seed"], i, config) for i in range(start, stop)]
    out: dict[str, Any] = render(batch, size, slots)
    lights = torch.tensor([sum(1 for light in s["lights"] if light[3] > 0) for s in batch])
    out["attributes"] = _attributes(
        out["instance"], out["seg"], out["kinds"], out["colours"], lights
    )
    out["instance"] = out["instance"].to(torch.int8)
    for key, value in out.items():
        parts.setdefault(key, []).append(value)


def _generate(config: dict[str, Any]) -> Scenes:
    n, size = config["n"], config["size"]
    chunk = max(1, CHUNK_PIXELS // (size * size))
    parts: dict[str, list[Any]] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see the module docstring's implementation notes
    try:
        for start in range(0, n, chunk):
            _render_into(parts, config, start, min(n, start + chunk))
    finally:
        torch.set_num_threads(threads)
    camera = torch.cat(parts["camera"])
    focal, centre = camera[:, 12], (size - 1) / 2
    intrinsics = torch.zeros(n, 3, 3)
    intrinsics[:, 0, 0], intrinsics[:, 1, 1] = focal, focal
    intrinsics[:, 0, 2], intrinsics[:, 1, 2], intrinsics[:, 2, 2] = centre, centre, 1
    pose = torch.eye(4).repeat(n, 1, 1)
    pose[:, :3, :3] = camera[:, 3:12].view(n, 3, 3)
    pose[:, :3, 3] = camera[:, :3]
    chunks: list[dict[str, Tensor]] = parts["attributes"]
    return Scenes(
        image=torch.cat(parts["image"]),
        seg=torch.cat(parts["seg"]),
        depth=torch.cat(parts["depth"]),
        normal=torch.cat(parts["normal"]),
        instance=torch.cat(parts["instance"]),
        intrinsics=intrinsics,
        camera_to_world=pose,
        attributes={k: torch.cat([c[k] for c in chunks]) for k in chunks[0]},
        config=dict(config),
    )
