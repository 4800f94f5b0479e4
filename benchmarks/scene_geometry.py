"""The scenes' geometry: constants, vector helpers, ray-shape intersections and normals (:mod:`benchmarks.scenes`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

ROOM_CLASSES = ("floor", "wall", "ceiling")
SHAPE_CLASSES = ("sphere", "box", "cylinder", "cone", "torus")
SCENE_CLASSES: list[str] = [*ROOM_CLASSES, *SHAPE_CLASSES]
"""``seg`` value -> class name."""

PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "orange": (0.95, 0.50, 0.08),
    "yellow": (0.92, 0.85, 0.15),
    "green": (0.15, 0.70, 0.20),
    "cyan": (0.10, 0.75, 0.80),
    "blue": (0.12, 0.25, 0.85),
    "purple": (0.55, 0.20, 0.75),
    "white": (0.92, 0.92, 0.90),
}
SCENE_COLOURS: list[str] = list(PALETTE)
"""``dominant_colour`` / ``object_colour`` value -> colour name."""

_EPS = 1e-4  # smallest accepted ray parameter
_FAR = 1e6
INF = float("inf")
_TORUS_STEPS = 48
_TORUS_TOL = 1e-3  # metres
SHADOW_OFFSET = 2e-3  # metres along the normal, against self-shadowing acne
CHUNK_PIXELS = 1 << 18
MATERIAL = 18  # albedo 3, kind, strength, scale, frame 9, phase 3
GEOMETRY = 16  # centre 3, world-to-local rotation 9, shape parameters 3, bounding radius
M64 = (1 << 64) - 1

Vec = tuple[Tensor, Tensor, Tensor]


# ---------------------------------------------------------------- vector helpers


def dot(a: Vec, b: Vec) -> Tensor:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def rotate(m: Sequence[Tensor], v: Vec) -> Vec:
    """``m @ v`` with ``m`` a row-major sequence of 9 tensors."""
    return (
        m[0] * v[0] + m[1] * v[1] + m[2] * v[2],
        m[3] * v[0] + m[4] * v[1] + m[5] * v[2],
        m[6] * v[0] + m[7] * v[1] + m[8] * v[2],
    )


def rotate_back(m: Sequence[Tensor], v: Vec) -> Vec:
    """``m.T @ v``."""
    return (
        m[0] * v[0] + m[3] * v[1] + m[6] * v[2],
        m[1] * v[0] + m[4] * v[1] + m[7] * v[2],
        m[2] * v[0] + m[5] * v[1] + m[8] * v[2],
    )


def normalise(v: Vec) -> Vec:
    length = torch.sqrt(dot(v, v))
    return (v[0] / length, v[1] / length, v[2] / length)


def nonzero(x: Tensor) -> Tensor:
    return torch.where(x == 0, 1e-30, x)


def sign(x: Tensor) -> Tensor:
    return torch.where(x >= 0, 1.0, -1.0)


# ---------------------------------------------------------------- ray-shape intersections
# Each takes local ray origins and directions (broadcastable tensors; directions need not be
# unit) and shape parameters, and returns the nearest ray parameter t > _EPS, inf for a miss.


def _nearest(*candidates: tuple[Tensor, Tensor]) -> Tensor:
    best: Tensor | None = None
    for t, ok in candidates:
        t = torch.where(ok & (t > _EPS) & (t < _FAR), t, INF)
        best = t if best is None else torch.minimum(best, t)
    assert best is not None
    return best


def _roots(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Both roots of ``a t^2 + 2 b t + c = 0`` in the cancellation-free form, and where real."""
    disc = b * b - a * c
    root = torch.sqrt(torch.clamp(disc, min=0))
    q = -(b + torch.where(b >= 0, root, -root))
    return q / nonzero(a), c / nonzero(q), disc >= 0


def _hit_sphere(o: Vec, d: Vec, shape: Sequence[Tensor]) -> Tensor:
    t0, t1, ok = _roots(dot(d, d), dot(o, d), dot(o, o) - shape[0] * shape[0])
    return _nearest((t0, ok), (t1, ok))


def _hit_box(o: Vec, d: Vec, shape: Sequence[Tensor]) -> Tensor:
    near: Tensor | None = None
    far: Tensor | None = None
    for i in range(3):
        di = nonzero(d[i])
        a, b = (-shape[i] - o[i]) / di, (shape[i] - o[i]) / di
        low, high = torch.minimum(a, b), torch.maximum(a, b)
        near = low if near is None else torch.maximum(near, low)
        far = high if far is None else torch.minimum(far, high)
    assert near is not None and far is not None
    ok = near <= far
    return _nearest((near, ok), (far, ok))


def _in_disc(o: Vec, d: Vec, t: Tensor, radius: Tensor) -> Tensor:
    x, z = o[0] + t * d[0], o[2] + t * d[2]
    return x * x + z * z <= radius * radius


def _hit_cylinder(o: Vec, d: Vec, shape: Sequence[Tensor]) -> Tensor:
    radius, half = shape[0], shape[1]
    a = d[0] * d[0] + d[2] * d[2]
    b = o[0] * d[0] + o[2] * d[2]
    t0, t1, ok = _roots(a, b, o[0] * o[0] + o[2] * o[2] - radius * radius)
    dy = nonzero(d[1])
    top, bottom = (half - o[1]) / dy, (-half - o[1]) / dy
    return _nearest(
        (t0, ok & ((o[1] + t0 * d[1]).abs() <= half)),
        (t1, ok & ((o[1] + t1 * d[1]).abs() <= half)),
        (top, _in_disc(o, d, top, radius)),
        (bottom, _in_disc(o, d, bottom, radius)),
    )


def _hit_cone(o: Vec, d: Vec, shape: Sequence[Tensor]) -> Tensor:
    # side: x^2 + z^2 = k^2 (half - y)^2 for |y| <= half, apex at y = half; base disc at -half
    radius, half = shape[0], shape[1]
    k2 = (radius / (2 * half)) ** 2
    ow, dw = half - o[1], -d[1]
    a = d[0] * d[0] + d[2] * d[2] - k2 * dw * dw
    b = o[0] * d[0] + o[2] * d[2] - k2 * ow * dw
    c = o[0] * o[0] + o[2] * o[2] - k2 * ow * ow
    t0, t1, ok = _roots(a, b, c)
    base = (-half - o[1]) / nonzero(d[1])
    return _nearest(
        (t0, ok & ((o[1] + t0 * d[1]).abs() <= half)),
        (t1, ok & ((o[1] + t1 * d[1]).abs() <= half)),
        (base, _in_disc(o, d, base, radius)),
    )


def _torus_distance(p: Vec, major: Tensor, minor: Tensor) -> Tensor:
    ring = torch.sqrt(p[0] * p[0] + p[2] * p[2]) - major
    return torch.sqrt(ring * ring + p[1] * p[1]) - minor


def _hit_torus(o: Vec, d: Vec, shape: Sequence[Tensor]) -> Tensor:
    """Sphere tracing from the bounding sphere, on the rays that enter it only."""
    full = torch.broadcast_shapes(o[0].shape, d[0].shape, shape[0].shape)
    length = torch.sqrt(dot(d, d))
    u = (d[0] / length, d[1] / length, d[2] / length)
    bound = shape[0] + shape[1]
    b = dot(o, u)
    disc = b * b - (dot(o, o) - bound * bound)
    root = torch.sqrt(torch.clamp(disc, min=0))
    exit_ = -b + root
    t = torch.full(full, INF)
    where = ((disc > 0) & (exit_ > 0)).expand(full).nonzero(as_tuple=True)
    if where[0].numel() == 0:
        return t

    def pick(x: Tensor) -> Tensor:
        return x.expand(full)[where]

    po, pu = tuple(pick(x) for x in o), tuple(pick(x) for x in u)
    major, minor = pick(shape[0]), pick(shape[1])
    s = torch.clamp(pick(-b - root), min=0)
    for _ in range(_TORUS_STEPS):
        s = s + _torus_distance(
            (po[0] + s * pu[0], po[1] + s * pu[1], po[2] + s * pu[2]), major, minor
        )
    gap = _torus_distance((po[0] + s * pu[0], po[1] + s * pu[1], po[2] + s * pu[2]), major, minor)
    s = s / pick(length)
    hit = (gap.abs() < _TORUS_TOL) & (s < pick(exit_ / length) + _TORUS_TOL) & (s > _EPS)
    t[where] = torch.where(hit, s, INF)
    return t


# ---------------------------------------------------------------- normals from local points


def _normal_sphere(p: Vec, shape: Sequence[Tensor]) -> Vec:
    return normalise(p)


def _normal_box(p: Vec, shape: Sequence[Tensor]) -> Vec:
    gap = [(shape[i] - p[i].abs()).abs() for i in range(3)]
    x = (gap[0] <= gap[1]) & (gap[0] <= gap[2])
    y = ~x & (gap[1] <= gap[2])
    z = ~x & ~y
    zero = torch.zeros_like(p[0])
    return tuple(torch.where(m, sign(p[i]), zero) for i, m in enumerate((x, y, z)))  # type: ignore[return-value]


def _normal_cylinder(p: Vec, shape: Sequence[Tensor]) -> Vec:
    radial = torch.clamp(torch.sqrt(p[0] * p[0] + p[2] * p[2]), min=1e-12)
    cap = (shape[1] - p[1].abs()).abs() < (radial - shape[0]).abs()
    zero = torch.zeros_like(p[0])
    return (
        torch.where(cap, zero, p[0] / radial),
        torch.where(cap, sign(p[1]), zero),
        torch.where(cap, zero, p[2] / radial),
    )


def _normal_cone(p: Vec, shape: Sequence[Tensor]) -> Vec:
    k = shape[0] / (2 * shape[1])
    radial = torch.clamp(torch.sqrt(p[0] * p[0] + p[2] * p[2]), min=1e-12)
    slant = torch.sqrt(1 + k * k)
    base = (p[1] + shape[1]).abs() < (radial - k * (shape[1] - p[1])).abs() / slant
    side = (p[0] / radial / slant, k / slant, p[2] / radial / slant)
    zero = torch.zeros_like(p[0])
    return (
        torch.where(base, zero, side[0]),
        torch.where(base, -1.0, side[1]),
        torch.where(base, zero, side[2]),
    )


def _normal_torus(p: Vec, shape: Sequence[Tensor]) -> Vec:
    radial = torch.clamp(torch.sqrt(p[0] * p[0] + p[2] * p[2]), min=1e-12)
    f = 1 - shape[0] / radial
    return normalise((p[0] * f, p[1], p[2] * f))


SHAPES: list[tuple[Callable[..., Tensor], Callable[..., Vec]]] = [
    (_hit_sphere, _normal_sphere),
    (_hit_box, _normal_box),
    (_hit_cylinder, _normal_cylinder),
    (_hit_cone, _normal_cone),
    (_hit_torus, _normal_torus),
]


# ---------------------------------------------------------------- rendering


def cast(kinds: Tensor, geometry: Tensor, o: Vec, d: Vec, near: Tensor) -> Tensor:
    """Ray parameter of every object slot: ``(B, K, P)``, inf for a miss or an empty slot.

    ``kinds: (B, K)``, ``geometry: (B, K, 16)``; ``o``, ``d``: (B, 1) or (B, P) each.
    ``near: (B, K, P)`` bool marks the rays that may hit each slot's object (a superset,
    e.g. those crossing its bounding sphere); only those are traced.
    """
    b, k, p = near.shape
    t = torch.full((b * k * p,), INF)
    scene, slot, pixel = (near & (kinds >= 0)[:, :, None]).nonzero(as_tuple=True)
    flat = (scene * k + slot) * p + pixel
    kind_of = kinds[scene, slot]
    for kind, (hit, _) in enumerate(SHAPES):
        chosen = (kind_of == kind).nonzero(as_tuple=True)[0]
        if chosen.numel() == 0:
            continue
        where, pix = scene[chosen], pixel[chosen]
        columns = geometry[where, slot[chosen]].unbind(1)
        rel = tuple(o[i].expand(b, p)[where, pix] - columns[i] for i in range(3))
        local_o = rotate(columns[3:12], rel)  # type: ignore[arg-type]
        local_d = rotate(columns[3:12], tuple(x[where, pix] for x in d))  # type: ignore[arg-type]
        t[flat[chosen]] = hit(local_o, local_d, columns[12:15])
    return t.view(b, k, p)
