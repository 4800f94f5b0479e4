"""Procedural scenes: shapes, label geometry, determinism, attributes, cache, bad arguments."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

import benchmarks.scene_geometry as geometry_module
import benchmarks.scene_render as render_module
import benchmarks.scenes as scenes_module
from benchmarks.scenes import (
    SCENE_CLASSES,
    SCENE_COLOURS,
    SHAPE_CLASSES,
    Scenes,
    backproject,
    make_scenes,
)

FIELDS = ("image", "seg", "depth", "normal", "instance", "intrinsics", "camera_to_world")


@pytest.fixture(scope="module")
def many() -> Scenes:
    return make_scenes(64, size=32, seed=11)


@pytest.fixture(scope="module")
def sharp() -> Scenes:
    return make_scenes(6, size=64, seed=2, noise=0.0)


def same(a: Scenes, b: Scenes) -> bool:
    fields = all(torch.equal(getattr(a, f), getattr(b, f)) for f in FIELDS)
    attributes = a.attributes.keys() == b.attributes.keys() and all(
        torch.equal(a.attributes[k], b.attributes[k]) for k in a.attributes
    )
    return fields and attributes


def rays(s: Scenes) -> Tensor:
    """Camera-frame ray direction of each pixel, ``(N, 3, H, W)`` with z = 1."""
    return backproject(torch.ones_like(s.depth), s.intrinsics)


def test_shapes_dtypes_and_ranges(many: Scenes) -> None:
    n, size = 64, 32
    assert len(many) == n
    assert many.image.shape == (n, 3, size, size) and many.image.dtype == torch.float32
    assert many.seg.shape == (n, size, size) and many.seg.dtype == torch.int64
    assert many.depth.shape == (n, 1, size, size) and many.depth.dtype == torch.float32
    assert many.normal.shape == (n, 3, size, size) and many.normal.dtype == torch.float32
    assert many.instance.shape == (n, size, size)
    assert many.intrinsics.shape == (n, 3, 3) and many.camera_to_world.shape == (n, 4, 4)
    assert many.image.min() >= 0 and many.image.max() <= 1
    assert many.image.std() > 0.05
    assert torch.isfinite(many.depth).all() and (many.depth > 0).all()
    assert many.seg.min() >= 0 and many.seg.max() < len(many.classes)
    assert many.classes == SCENE_CLASSES and many.colours == SCENE_COLOURS
    assert len(SHAPE_CLASSES) >= 5 and {"floor", "wall"} <= set(many.classes)
    assert many.config["n"] == n and many.config["size"] == size
    for name, value in many.attributes.items():
        assert len(value) == n, name


def test_every_class_appears(many: Scenes) -> None:
    present = torch.bincount(many.seg.flatten(), minlength=len(SCENE_CLASSES))
    for name in ("floor", "wall", *SHAPE_CLASSES):
        assert present[SCENE_CLASSES.index(name)] > 0, name
    # objects are a sizeable part of the image, not specks
    objects = (many.seg >= SCENE_CLASSES.index(SHAPE_CLASSES[0])).float().mean()
    assert 0.05 < objects < 0.6


def test_normals_are_unit_and_face_the_camera(many: Scenes) -> None:
    length = many.normal.norm(dim=1)
    assert (length - 1).abs().max() < 1e-4
    facing = (many.normal * rays(many)).sum(1)
    assert (facing < 0).all()


def finite_difference_normals(s: Scenes) -> Tensor:
    """Normals of the back-projected depth map on interior pixels: ``(N, 3, H-2, W-2)``."""
    points = backproject(s.depth.double(), s.intrinsics.double())
    du = points[:, :, 1:-1, 2:] - points[:, :, 1:-1, :-2]
    dv = points[:, :, 2:, 1:-1] - points[:, :, :-2, 1:-1]
    n = torch.nn.functional.normalize(torch.cross(du, dv, dim=1), dim=1)
    towards = (n * rays(s)[:, :, 1:-1, 1:-1].double()).sum(1, keepdim=True)
    return torch.where(towards > 0, -n, n).float()


def planar_interior(s: Scenes, name: str) -> Tensor:
    """Pixels whose 3x3 neighbourhood is ``name`` with one stored normal: ``(N, H-2, W-2)``."""
    cls = s.seg == SCENE_CLASSES.index(name)
    centre = s.normal[:, :, 1:-1, 1:-1]
    keep = cls[:, 1:-1, 1:-1].clone()
    h, w = s.seg.shape[1:]
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            keep &= cls[:, dy : dy + h - 2, dx : dx + w - 2]
            other = s.normal[:, :, dy : dy + h - 2, dx : dx + w - 2]
            keep &= (other - centre).abs().amax(1) < 1e-3
    return keep


@pytest.mark.parametrize("name", ["floor", "wall"])
def test_normals_match_depth_on_planes(sharp: Scenes, name: str) -> None:
    keep = planar_interior(sharp, name)
    assert keep.sum() > 200
    cosine = (finite_difference_normals(sharp) * sharp.normal[:, :, 1:-1, 1:-1]).sum(1)
    angle = torch.rad2deg(torch.acos(cosine[keep].clamp(max=1)))
    assert angle.max() < 2.0


def test_floor_is_world_up_and_at_height_zero(sharp: Scenes) -> None:
    floor = sharp.seg == SCENE_CLASSES.index("floor")
    rotation = sharp.camera_to_world[:, :3, :3]
    up = rotation.transpose(1, 2) @ torch.tensor([0.0, 1.0, 0.0])  # world y in camera frame
    deviation = (sharp.normal - up[:, :, None, None]).norm(dim=1)
    assert deviation[floor].max() < 1e-4
    points = backproject(sharp.depth, sharp.intrinsics).flatten(2)
    world = rotation @ points + sharp.camera_to_world[:, :3, 3:]
    assert world[:, 1][floor.flatten(1)].abs().max() < 1e-3


def test_depth_is_camera_z_of_the_first_hit(sharp: Scenes) -> None:
    # a closed room: every depth is bounded by the room's diagonal, and objects sit in front
    assert sharp.depth.max() < 16
    objects = sharp.instance >= 0
    assert objects.any() and (sharp.depth[:, 0][objects] < 10).all()


def test_same_seed_same_scenes_and_prefix_property() -> None:
    a = make_scenes(5, size=32, seed=3)
    assert same(a, make_scenes(5, size=32, seed=3))
    assert same(a[:3], make_scenes(3, size=32, seed=3))
    assert same(a[4], make_scenes(5, size=32, seed=3)[4:5])
    other = make_scenes(5, size=32, seed=4)
    assert not torch.equal(a.image, other.image) and not torch.equal(a.seg, other.seg)
    # scenes within one set differ too
    assert not torch.equal(a.seg[0], a.seg[1])


def test_texture_off_keeps_geometry_and_noise_is_additive() -> None:
    base = make_scenes(3, size=32, seed=5, noise=0.0)
    plain = make_scenes(3, size=32, seed=5, noise=0.0, texture=False)
    noisy = make_scenes(3, size=32, seed=5, noise=0.05)
    for field in ("seg", "depth", "normal", "instance"):
        assert torch.equal(getattr(base, field), getattr(plain, field)), field
        assert torch.equal(getattr(base, field), getattr(noisy, field)), field
    assert not torch.equal(base.image, plain.image)
    residual = noisy.image - base.image
    interior = (base.image > 0.2) & (base.image < 0.8)
    assert 0.035 < residual[interior].std() < 0.065


def recomputed_attributes(s: Scenes) -> dict[str, Tensor]:
    n, slots = s.attributes["object_class"].shape
    width = s.seg.shape[-1]
    out: dict[str, list[int]] = {k: [] for k in ("count", "dominant", "largest", "left_right")}
    for i in range(n):
        inst = s.instance[i].long()
        pixels = torch.stack([(inst == k).sum() for k in range(slots)])
        out["count"].append(int((pixels > 0).sum()))
        if pixels.sum() == 0:
            out["dominant"].append(-1)
            out["largest"].append(-1)
            out["left_right"].append(-1)
            continue
        by_colour = torch.zeros(len(SCENE_COLOURS), dtype=torch.long)
        for k in range(slots):
            if s.attributes["object_colour"][i, k] >= 0:
                by_colour[s.attributes["object_colour"][i, k]] += pixels[k]
        out["dominant"].append(int(by_colour.argmax()))
        largest = int(pixels.argmax())
        out["largest"].append(int(s.attributes["object_class"][i, largest]))
        columns = (inst == largest).nonzero()[:, 1].double()
        out["left_right"].append(int(columns.mean() >= (width - 1) / 2))
    return {k: torch.tensor(v) for k, v in out.items()}


def test_attributes_agree_with_the_label_maps(many: Scenes) -> None:
    a = many.attributes
    for name in SHAPE_CLASSES:
        visible = (many.seg == SCENE_CLASSES.index(name)).flatten(1).any(1)
        assert torch.equal(a[f"has_{name}"].bool(), visible), name
    expected = recomputed_attributes(many)
    assert torch.equal(a["count"], expected["count"])
    assert torch.equal(a["dominant_colour"], expected["dominant"])
    assert torch.equal(a["largest_class"], expected["largest"])
    assert torch.equal(a["left_right"], expected["left_right"])
    placed = (a["object_class"] >= 0).sum(1)
    assert torch.equal(a["placed"], placed)
    assert (a["count"] <= placed).all() and (placed >= 2).all() and (placed <= 6).all()
    assert len(set(placed.tolist())) > 2
    assert set(a["lights"].tolist()) == {1, 2}
    # each visible object's pixels carry its class, and its pixel count is stored
    for i in range(8):
        for k in range(a["object_class"].shape[1]):
            mine = many.instance[i] == k
            assert int(mine.sum()) == int(a["object_pixels"][i, k])
            if mine.any():
                assert (many.seg[i][mine] == a["object_class"][i, k]).all()
    rooms = many.instance < 0
    assert (many.seg[rooms] < len(geometry_module.ROOM_CLASSES)).all()
    # colours are drawn independently of shape: several colours per shape class
    cls, col = a["object_class"].flatten(), a["object_colour"].flatten()
    for index in range(len(SHAPE_CLASSES)):
        assert len(set(col[cls == index + 3].tolist())) >= 3


def test_attributes_when_no_object_is_seen() -> None:
    s = make_scenes(12, size=16, seed=0, min_objects=0, max_objects=1)
    empty = s.attributes["placed"] == 0
    assert empty.any() and (~empty).any()
    for key in ("dominant_colour", "largest_class", "left_right"):
        assert (s.attributes[key][empty] == -1).all(), key
    assert (s.attributes["count"][empty] == 0).all()
    assert (s.instance[empty] == -1).all()


def test_slicing_and_indexing(many: Scenes) -> None:
    part = many[2:5]
    assert isinstance(part, Scenes) and len(part) == 3
    assert torch.equal(part.seg, many.seg[2:5])
    assert torch.equal(many[-1].image, many.image[-1:])
    picked = many[torch.tensor([0, 3])]
    assert torch.equal(picked.attributes["count"], many.attributes["count"][[0, 3]])
    assert torch.equal(many[[1, 2]].depth, many.depth[1:3])
    with pytest.raises(IndexError):
        many[64]


def test_cache_round_trip(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    first = make_scenes(4, size=16, seed=7, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"

    def refuse(config: dict[str, Any]) -> Scenes:
        raise AssertionError("the cached file should have been loaded")

    with monkeypatch.context() as patch:
        patch.setattr(scenes_module, "_generate", refuse)
        again = make_scenes(4, size=16, seed=7, cache_dir=tmp_path)
    assert same(first, again) and again.config == first.config
    assert again.classes == first.classes and again.colours == first.colours
    make_scenes(4, size=16, seed=8, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 2
    files[0].write_bytes(b"not a torch file")
    assert same(first, make_scenes(4, size=16, seed=7, cache_dir=tmp_path))
    assert not list(tmp_path.glob("*.tmp"))


def test_config_is_json_serialisable() -> None:
    import json

    s = make_scenes(1, size=16, seed=1, noise=0.1, texture=False)
    assert json.loads(json.dumps(s.config)) == s.config
    assert s.config["version"] == scenes_module.GENERATOR_VERSION


BAD_ARGUMENTS = [
    ({"n": 0}, ValueError, "n="),
    ({"n": 2.0}, TypeError, "n must"),
    ({"size": 8}, ValueError, "size="),
    ({"seed": "0"}, TypeError, "seed"),
    ({"noise": -0.1}, ValueError, "noise"),
    ({"noise": math.nan}, ValueError, "noise"),
    ({"texture": 1}, TypeError, "texture"),
    ({"min_objects": 4, "max_objects": 3}, ValueError, "min_objects=4 > max_objects=3"),
    ({"min_objects": -1}, ValueError, "min_objects"),
    ({"max_objects": 0}, ValueError, "max_objects"),
    ({"cache_dir": 3}, TypeError, "cache_dir"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_ARGUMENTS)
def test_bad_arguments_are_named(kwargs: dict[str, Any], error: type, message: str) -> None:
    arguments = {"n": 2, "size": 16, **kwargs}
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_scenes(**arguments)


def brute_force_hit(inside: Any, o: Tensor, u: Tensor, far: float, step: float) -> Tensor:
    """Distance along unit directions ``u`` to the first sample inside the shape."""
    s = torch.arange(0, far, step)
    hits = inside(o[:, None, :] + s[None, :, None] * u[:, None, :])
    return torch.where(hits.any(1), s[hits.int().argmax(1)], torch.inf)


def test_each_shape_matches_a_brute_force_oracle() -> None:
    g = torch.Generator().manual_seed(0)
    m = 200
    radius, half, major, minor = 0.5, 0.4, 0.5, 0.15
    k = radius / (2 * half)

    def radial(p: Tensor) -> Tensor:
        return p[..., 0].hypot(p[..., 2])

    cases = {
        "sphere": (
            geometry_module._hit_sphere,
            (radius, 0.0, 0.0),
            lambda p: p.norm(dim=-1) < radius,
        ),
        "box": (
            geometry_module._hit_box,
            (0.5, 0.3, 0.2),
            lambda p: (p.abs() < torch.tensor([0.5, 0.3, 0.2], dtype=p.dtype)).all(-1),
        ),
        "cylinder": (
            geometry_module._hit_cylinder,
            (radius, half, 0.0),
            lambda p: (radial(p) < radius) & (p[..., 1].abs() < half),
        ),
        "cone": (
            geometry_module._hit_cone,
            (radius, half, 0.0),
            lambda p: (p[..., 1].abs() < half) & (radial(p) < k * (half - p[..., 1])),
        ),
        "torus": (
            geometry_module._hit_torus,
            (major, minor, 0.0),
            lambda p: (radial(p) - major).hypot(p[..., 1]) < minor,
        ),
    }
    for name, (hit, shape, inside) in cases.items():
        origin = torch.nn.functional.normalize(torch.randn(m, 3, generator=g), dim=1) * 2.5
        target = (torch.rand(m, 3, generator=g) - 0.5) * 1.2
        direction = (target - origin) * (0.5 + torch.rand(m, 1, generator=g))  # not unit
        got = hit(
            tuple(origin.unbind(1)),
            tuple(direction.unbind(1)),
            tuple(torch.full((m,), v) for v in shape),
        )
        got = got * direction.norm(dim=1)  # distance along the ray
        unit = torch.nn.functional.normalize(direction, dim=1)
        expected = brute_force_hit(inside, origin, unit, 4.5, 1.5e-3)
        both = torch.isfinite(got) & torch.isfinite(expected)
        agree = (torch.isfinite(got) == torch.isfinite(expected)).float().mean()
        assert agree > 0.98, name  # grazing rays may differ by one sample
        assert both.sum() > m // 4, name
        assert (got[both] - expected[both]).abs().max() < 3e-3, name


def test_ray_culling_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    culled = make_scenes(4, size=32, seed=9)

    def everything(*args: Any) -> Tensor:
        geometry = args[1]
        b, k = geometry.shape[:2]
        return torch.ones(b, k, 32 * 32, dtype=torch.bool)

    monkeypatch.setattr(render_module, "_in_view", everything)
    monkeypatch.setattr(render_module, "_towards", everything)
    assert same(culled, make_scenes(4, size=32, seed=9))
