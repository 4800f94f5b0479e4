"""The scenes' ray caster: what a camera ray sees, shading, shadows and textures (:mod:`benchmarks.scenes`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from benchmarks.scene_geometry import (
    GEOMETRY,
    INF,
    MATERIAL,
    SHADOW_OFFSET,
    SHAPES,
    Vec,
    cast,
    dot,
    nonzero,
    normalise,
    rotate,
    rotate_back,
    sign,
)


def _in_view(camera: Tensor, geometry: Tensor, size: int) -> Tensor:
    """Primary-ray culling, ``(B, K, P)``: the pixels inside each object's bounding-sphere
    image box (the projection of the sphere's bounding cube, conservative)."""
    pixels = torch.arange(size, dtype=torch.float32)
    centre = (size - 1) / 2
    m = camera[:, 3:12, None].unbind(1)
    x, y, z = rotate_back(m, tuple(geometry[..., i] - camera[:, i : i + 1] for i in range(3)))  # type: ignore[arg-type]
    radius, focal = geometry[..., 15], camera[:, 12:13]
    close, far = z - radius, z + radius
    whole = close <= 1e-3
    safe = torch.clamp(close, min=1e-3)

    def span(c: Tensor) -> tuple[Tensor, Tensor]:
        low = torch.minimum((c - radius) / safe, (c - radius) / far) * focal + centre
        high = torch.maximum((c + radius) / safe, (c + radius) / far) * focal + centre
        low, high = torch.where(whole, -INF, low - 1), torch.where(whole, INF, high + 1)
        return low[..., None], high[..., None]

    (u0, u1), (v0, v1) = span(x), span(y)
    cols = (pixels >= u0) & (pixels <= u1) & (far > 0)[..., None]
    rows = (pixels >= v0) & (pixels <= v1)
    b, k = z.shape
    return (rows[..., :, None] & cols[..., None, :]).view(b, k, size * size)


def _towards(light: Vec, geometry: Tensor, w: Vec, w2: Tensor) -> Tensor:
    """Shadow-ray culling, ``(B, K, P)``: the points ``light - w`` whose segment to the
    light lies in each bounding sphere's cone seen from the light (``w2 = |w|^2``)."""
    e = tuple((geometry[..., i] - light[i])[..., None] for i in range(3))
    spread = dot(e, e) - geometry[..., 15:16] ** 2  # type: ignore[arg-type]
    along = -dot(tuple(x[:, None, :] for x in w), e)  # type: ignore[arg-type]
    return ((along > 0) | (spread <= 0)) & (along * along >= w2[:, None, :] * spread)


def _pattern(kind: Tensor, q: list[Tensor]) -> Tensor:
    """Texture value in [0, 1] from the three texture coordinates ``q``."""
    cells = [torch.floor(x) for x in q]
    checker = torch.remainder(cells[0] + cells[1] + cells[2], 2)
    stripes = (q[0] - cells[0] < 0.5).float()

    def triangle(x: Tensor) -> Tensor:
        return (2 * (x - torch.floor(x)) - 1).abs()

    m = (triangle(q[0] + 0.5 * triangle(q[1])) + triangle(1.7 * q[1] + 0.5 * triangle(q[2]))) / 2
    marble = m * m * (3 - 2 * m)
    zero = torch.zeros_like(checker)
    return torch.where(
        kind == 1, checker, torch.where(kind == 2, stripes, torch.where(kind == 3, marble, zero))
    )


def render(batch: list[dict[str, Any]], size: int, slots: int) -> dict[str, Tensor]:
    b, p = len(batch), size * size
    camera = torch.tensor([s["camera"] for s in batch], dtype=torch.float32)
    room = torch.tensor([s["room"] for s in batch], dtype=torch.float32)
    lights = torch.tensor([s["lights"] for s in batch], dtype=torch.float32)
    ambient = torch.tensor([s["ambient"] for s in batch], dtype=torch.float32)
    kinds = torch.full((b, slots), -1, dtype=torch.long)
    colours = torch.full((b, slots), -1, dtype=torch.long)
    geometry = torch.zeros(b, slots, GEOMETRY)
    materials = torch.zeros(b, 3 + slots, MATERIAL)
    for i, s in enumerate(batch):
        count = len(s["kinds"])
        kinds[i, :count] = torch.tensor(s["kinds"], dtype=torch.long)
        colours[i, :count] = torch.tensor(s["colours"], dtype=torch.long)
        if count:
            geometry[i, :count] = torch.tensor(s["geometry"], dtype=torch.float32)
        materials[i, : 3 + count] = torch.tensor(s["materials"], dtype=torch.float32)

    centre = (size - 1) / 2
    cols = (torch.arange(p) % size).float() - centre
    rows = torch.div(torch.arange(p), size, rounding_mode="floor").float() - centre
    focal = camera[:, 12:13]
    xc, yc = cols[None] / focal, rows[None] / focal
    m = [camera[:, 3 + j : 4 + j] for j in range(9)]  # camera-to-world, row-major
    d = (m[0] * xc + m[1] * yc + m[2], m[3] * xc + m[4] * yc + m[5], m[6] * xc + m[7] * yc + m[8])
    o = (camera[:, 0:1], camera[:, 1:2], camera[:, 2:3])

    # the room from inside: the nearest of the x, y and z slabs' far planes
    half_width, height, depth = room[:, 0:1] / 2, room[:, 1:2], room[:, 2:3]
    tx = torch.where(d[0] > 0, half_width - o[0], -half_width - o[0]) / nonzero(d[0])
    ty = torch.where(d[1] > 0, height - o[1], -o[1]) / nonzero(d[1])
    tz = torch.where(d[2] > 0, depth - o[2], -o[2]) / nonzero(d[2])
    x_wall = (tx <= ty) & (tx <= tz)
    y_face = ~x_wall & (ty <= tz)
    t_room = torch.minimum(torch.minimum(tx, ty), tz)
    room_class = torch.where(y_face, torch.where(d[1] > 0, 2, 0), 1)
    zero = torch.zeros_like(t_room)
    normal = [
        torch.where(x_wall, -sign(d[0]), zero),
        torch.where(y_face, -sign(d[1]), zero),
        torch.where(~x_wall & ~y_face, -sign(d[2]), zero),
    ]

    t_objects, slot = cast(kinds, geometry, o, d, _in_view(camera, geometry, size)).min(dim=1)
    on_object = t_objects < t_room
    t = torch.where(on_object, t_objects, t_room)
    point = [o[i] + t * d[i] for i in range(3)]
    coords = [x.clone() for x in point]
    kind = torch.where(on_object, kinds.gather(1, slot), -1)
    for index, (_, normal_of) in enumerate(SHAPES):
        scene, pixel = (kind == index).nonzero(as_tuple=True)
        if scene.numel() == 0:
            continue
        g = geometry[scene, slot[scene, pixel]]
        columns = [g[:, j] for j in range(GEOMETRY)]
        local = rotate(columns[3:12], tuple(point[i][scene, pixel] - columns[i] for i in range(3)))  # type: ignore[arg-type]
        world = rotate_back(columns[3:12], normal_of(local, columns[12:15]))
        for i in range(3):
            normal[i][scene, pixel] = world[i]
            coords[i][scene, pixel] = local[i]
    flip = torch.where(dot(tuple(normal), d) > 0, -1.0, 1.0)  # type: ignore[arg-type]
    normal = normalise((normal[0] * flip, normal[1] * flip, normal[2] * flip))

    material = torch.where(on_object, 3 + slot, room_class)
    rows_of = material + torch.arange(b)[:, None] * materials.shape[1]
    props = materials.view(-1, MATERIAL).index_select(0, rows_of.view(-1)).view(b, p, MATERIAL)
    prop = props.unbind(-1)
    q = [
        dot(tuple(coords), tuple(prop[6 + 3 * i : 9 + 3 * i])) / prop[5] + prop[15 + i]
        for i in range(3)
    ]  # type: ignore[arg-type]
    factor = 1 - prop[4] * _pattern(prop[3], q)

    shade = [ambient[:, 0:1] * ambient[:, 1 + c : 2 + c] + zero for c in range(3)]
    lifted = tuple(point[i] + normal[i] * SHADOW_OFFSET for i in range(3))
    for j in range(lights.shape[1]):
        power = lights[:, j, 3:4]
        if not bool((power > 0).any()):
            continue
        light = tuple(lights[:, j, i : i + 1] for i in range(3))
        towards = tuple(light[i] - lifted[i] for i in range(3))
        distance2 = dot(towards, towards)  # type: ignore[arg-type]
        cosine = torch.clamp(dot(normal, towards) / torch.sqrt(distance2), min=0)  # type: ignore[arg-type]
        near = _towards(light, geometry, towards, distance2)  # type: ignore[arg-type]
        near &= ((cosine > 0) & (power > 0))[:, None, :]  # unlit points need no shadow ray
        lit = ~(cast(kinds, geometry, lifted, towards, near) < 1).any(dim=1)  # type: ignore[arg-type]
        energy = power * cosine * lit * (16 / (16 + distance2))
        for c in range(3):
            shade[c] = shade[c] + energy * lights[:, j, 4 + c : 5 + c]
    image = torch.stack([prop[c] * factor * shade[c] for c in range(3)], dim=1)
    if batch[0]["noise"] is not None:
        image = image + torch.stack([s["noise"] for s in batch])
    image = torch.clamp(image, 0, 1)

    camera_normal = rotate_back(m, normal)
    instance = torch.where(on_object, slot, -1)
    seg = torch.where(on_object, 3 + kind, room_class)
    return {
        "image": image.view(b, 3, size, size),
        "seg": seg.view(b, size, size),
        "depth": t.view(b, 1, size, size),
        "normal": torch.stack(camera_normal, dim=1).view(b, 3, size, size),
        "instance": instance.view(b, size, size),
        "kinds": kinds,
        "colours": colours,
        "camera": camera,
    }
