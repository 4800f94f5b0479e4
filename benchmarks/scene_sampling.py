"""Random scene parameters, one generator per scene index (:mod:`benchmarks.scenes`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from benchmarks.scene_geometry import M64, PALETTE, SCENE_COLOURS, SHAPE_CLASSES


def _mix64(x: int) -> int:
    """splitmix64: a well-spread 64-bit hash, so (seed, index) keys do not collide."""
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


class _Draws:
    """Uniform numbers from scene ``index``'s own generator."""

    def __init__(self, seed: int, index: int) -> None:
        self.generator = torch.Generator().manual_seed(_mix64(_mix64(seed & M64) ^ index))
        self._buffer: list[float] = []

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        if not self._buffer:
            drawn = torch.rand(64, generator=self.generator, dtype=torch.float64)
            self._buffer = drawn.tolist()[::-1]
        return low + (high - low) * self._buffer.pop()

    def integer(self, low: int, high: int) -> int:
        """Uniform in ``low..high`` inclusive."""
        return min(high, low + int(self.uniform() * (high - low + 1)))

    def choice(self, weights: Sequence[float]) -> int:
        x, total = self.uniform() * sum(weights), 0.0
        for i, w in enumerate(weights):
            total += w
            if x < total:
                return i
        return len(weights) - 1


def _matmul3(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    return [[sum(a[i][k] * b[k][j] for k in range(3)) for j in range(3)] for i in range(3)]


def _yaw_tilt(yaw: float, tilt: float) -> list[float]:
    """World-to-local rotation (row-major) of an object turned by ``tilt`` about its x axis,
    then by ``yaw`` about the vertical."""
    cy, sy, ct, st = math.cos(yaw), math.sin(yaw), math.cos(tilt), math.sin(tilt)
    local_to_world = _matmul3(
        [[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], [[1, 0, 0], [0, ct, -st], [0, st, ct]]
    )
    return [local_to_world[j][i] for i in range(3) for j in range(3)]


def _unit(v: Sequence[float]) -> list[float]:
    length = math.sqrt(sum(x * x for x in v))
    return [x / length for x in v]


def _cross(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


def _material(
    r: _Draws,
    albedo: Sequence[float],
    kinds: Sequence[float],
    strength: tuple[float, float],
    scale: tuple[float, float],
    frame: Sequence[float] | None,
    texture: bool,
) -> list[float]:
    """albedo 3, kind (0 plain, 1 checker, 2 stripes, 3 marble), strength, scale, frame 9,
    phase 3; ``frame=None`` draws a random orthonormal frame (solid texture on objects)."""
    kind = r.choice(kinds)
    amount, period = r.uniform(*strength), r.uniform(*scale)
    if frame is None:
        z, angle = r.uniform(-1, 1), r.uniform(0, 2 * math.pi)
        e1 = [math.sqrt(1 - z * z) * math.cos(angle), math.sqrt(1 - z * z) * math.sin(angle), z]
        helper = [1.0, 0.0, 0.0] if abs(e1[0]) < 0.9 else [0.0, 1.0, 0.0]
        e2 = _unit(_cross(e1, helper))
        frame = [*e1, *e2, *_cross(e1, e2)]
    phase = [r.uniform(0, 1) for _ in range(3)]
    return [*albedo, float(kind if texture else 0), amount, period, *frame, *phase]


def _room_albedo(r: _Draws, low: float, high: float) -> list[float]:
    level = r.uniform(low, high)
    return [min(1.0, level * r.uniform(0.85, 1.15)) for _ in range(3)]


def sample_scene(seed: int, index: int, config: dict[str, Any]) -> dict[str, Any]:
    """Python-float parameters of scene ``index`` (camera, room, lights, materials, objects)."""
    r, size, texture = _Draws(seed, index), config["size"], config["texture"]
    width, depth, height = r.uniform(6, 10), r.uniform(6, 10), r.uniform(2.6, 3.6)
    hfov = math.radians(r.uniform(50, 75))
    yaw, pitch = math.radians(r.uniform(-25, 25)), math.radians(r.uniform(12, 35))
    roll = math.radians(r.uniform(-4, 4))
    eye = [r.uniform(-width / 4, width / 4), r.uniform(1.0, 2.0), r.uniform(0.3, 1.2)]
    forward = [math.sin(yaw) * math.cos(pitch), -math.sin(pitch), math.cos(yaw) * math.cos(pitch)]
    right = _unit(_cross(forward, [0.0, 1.0, 0.0]))
    down = _cross(forward, right)
    cr, sr = math.cos(roll), math.sin(roll)
    right, down = (
        [cr * a + sr * b for a, b in zip(right, down, strict=True)],
        [cr * b - sr * a for a, b in zip(right, down, strict=True)],
    )
    rotation = [v for row in zip(right, down, forward, strict=True) for v in row]
    focal = size / (2 * math.tan(hfov / 2))

    lights = [[0.0] * 7, [0.0] * 7]
    count = r.integer(1, 2)
    for j in range(count):
        position = [
            r.uniform(-width / 2 + 0.5, width / 2 - 0.5),
            r.uniform(max(2.2, height - 0.8), height - 0.15),
            r.uniform(0.3, depth - 0.5),
        ]
        power = r.uniform(1.0, 1.7) if count == 1 else r.uniform(0.6, 1.1)
        lights[j] = [*position, power, *(r.uniform(0.9, 1.1) for _ in range(3))]
    ambient = [r.uniform(0.12, 0.35), *(r.uniform(0.9, 1.1) for _ in range(3))]

    angle = r.uniform(0, math.pi)
    flat = [math.cos(angle), 0.0, math.sin(angle), -math.sin(angle), 0.0, math.cos(angle)]
    upright = [math.cos(angle), 0.0, math.sin(angle), 0.0, 1.0, 0.0]
    materials = [
        _material(
            r,
            _room_albedo(r, 0.25, 0.7),
            (1, 4, 3, 2),
            (0.2, 0.6),
            (0.3, 1.0),
            [*flat, 0.0, 0.0, 0.0],
            texture,
        ),
        _material(
            r,
            _room_albedo(r, 0.4, 0.85),
            (5, 0, 3, 2),
            (0.1, 0.4),
            (0.2, 0.8),
            [*upright, 0.0, 0.0, 0.0],
            texture,
        ),
        _material(
            r,
            _room_albedo(r, 0.6, 0.9),
            (8, 0, 0, 2),
            (0.1, 0.3),
            (0.5, 1.5),
            [*flat, 0.0, 0.0, 0.0],
            texture,
        ),
    ]

    kinds, geometry, colours, footprints = [], [], [], []
    for _ in range(r.integer(config["min_objects"], config["max_objects"])):
        kind = r.integer(0, len(SHAPE_CLASSES) - 1)
        turn, tilt = r.uniform(0, 2 * math.pi), 0.0
        if kind == 0:  # sphere
            radius = r.uniform(0.3, 0.8)
            shape, lift, reach = [radius, 0.0, 0.0], radius, radius
        elif kind == 1:  # box
            shape = [r.uniform(0.2, 0.7), r.uniform(0.2, 0.7), r.uniform(0.2, 0.7)]
            lift, reach = shape[1], math.hypot(shape[0], shape[2])
        elif kind == 2:  # cylinder
            radius, half = r.uniform(0.2, 0.5), r.uniform(0.2, 0.8)
            shape = [radius, half, 0.0]
            if r.uniform() < 0.25:
                tilt, lift, reach = math.pi / 2, radius, math.hypot(radius, half)
            else:
                lift, reach = half, radius
        elif kind == 3:  # cone
            radius, half = r.uniform(0.3, 0.6), r.uniform(0.3, 0.8)
            shape, lift, reach = [radius, half, 0.0], half, radius
        else:  # torus
            major = r.uniform(0.3, 0.6)
            minor = r.uniform(0.08, min(0.25, 0.6 * major))
            tilt = [0.0, math.pi / 2, r.uniform(0.2, 1.3)][r.choice((4, 3, 3))]
            shape, lift, reach = [major, minor, 0.0], major * math.sin(tilt) + minor, major + minor
        for _attempt in range(12):
            bearing = yaw + r.uniform(-1, 1) * 0.8 * hfov / 2
            distance = r.uniform(1.5, 5.5)
            x = eye[0] + distance * math.sin(bearing)
            z = eye[2] + distance * math.cos(bearing)
            x = min(max(x, -width / 2 + reach + 0.05), width / 2 - reach - 0.05)
            z = min(max(z, reach + 0.05), depth - reach - 0.05)
            if all(math.hypot(x - a, z - b) > reach + c + 0.05 for a, b, c in footprints):
                break
        footprints.append((x, z, reach))
        colour = r.integer(0, len(SCENE_COLOURS) - 1)
        brightness = r.uniform(0.75, 1.0)
        albedo = [
            min(1.0, max(0.0, c * brightness + r.uniform(-0.04, 0.04)))
            for c in PALETTE[SCENE_COLOURS[colour]]
        ]
        materials.append(
            _material(r, albedo, (4, 2, 2, 2), (0.25, 0.5), (0.06, 0.25), None, texture)
        )
        kinds.append(kind)
        bound = [shape[0], math.hypot(*shape), math.hypot(shape[0], shape[1])][min(kind, 2)]
        if kind == 4:
            bound = shape[0] + shape[1]
        geometry.append([x, lift, z, *_yaw_tilt(turn, tilt), *shape, bound * 1.001 + 1e-3])
        colours.append(colour)
    noise = None
    if config["noise"] > 0:
        noise = torch.randn(3, size * size, generator=r.generator) * config["noise"]
    return {
        "camera": [*eye, *rotation, focal],
        "room": [width, height, depth],
        "lights": lights,
        "ambient": ambient,
        "materials": materials,
        "kinds": kinds,
        "geometry": geometry,
        "colours": colours,
        "noise": noise,
    }
