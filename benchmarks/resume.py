"""What a resumed run may keep: a part's version (its config, seed and the code) and the match rule.

``--resume DIR`` keeps a part of ``DIR/results.json`` when it finished there
(its metrics are stored and it is not in ``failed_parts``) and its recorded
version equals the version it would run with now; every other part runs again.

**Granularity: the part, and inside the long parts the cell.** A part is kept
whole when it finished; the dense and PAM parts also store each finished cell
(:mod:`benchmarks.cells`: a seed × subset × ratio × method row, a split × seed
× pruner table), so a part that did not finish is rerun from its stored cells. The
suite's seed is part of a part's version, so a resume with another ``--seed``
reruns every part (a cell's key names its own seed, so cells of seeds both
runs share are kept).

**Code version: a hash of the package sources, not the git commit.** The hash
covers every ``*.py`` / ``*.json`` file of ``benchmarks``, ``cut_plugin``,
``pam_plugin`` and ``adapters`` plus the versions of python, torch,
torch-pruning and numpy. A commit id would not do: benchmarks are run from a
working tree that is often dirty, and ``<sha>-dirty`` names no particular
change, so an edited scorer would silently keep stale numbers; it would also
rerun everything after a commit that touched only docs or tests, and it is
``unknown`` outside a git checkout. The source hash changes exactly when code
that can change a number changes, and costs a few milliseconds. It is not
narrowed per part (an import graph per part is more machinery than a rerun
costs); optional packages a single part uses (nni, onnxruntime) are left out,
so installing a missing extra and resuming keeps the parts that ran.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from collections.abc import Mapping
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

__all__ = ["PACKAGES", "code_version", "config_hash", "kept_parts", "part_version"]

ROOT = Path(__file__).resolve().parent.parent
PACKAGES: tuple[str, ...] = ("benchmarks", "cut_plugin", "pam_plugin", "adapters")
_DISTRIBUTIONS = ("torch", "torch-pruning", "numpy")


def _plain(value: Any) -> Any:
    """A config value as plain JSON (dataclasses, mappings and tuples included), for hashing."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def config_hash(config: Any) -> str:
    """16 hex digits of the part's config (field by field, order-independent for mappings)."""
    text = json.dumps(_plain(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@cache
def code_version(root: str | None = None) -> str:
    """16 hex digits over the project's package sources and the core library versions."""
    base = Path(root) if root else ROOT
    digest = hashlib.sha256()
    for package in PACKAGES:
        files = sorted(p for p in (base / package).rglob("*") if p.suffix in {".py", ".json"})
        for path in files:
            if "__pycache__" in path.parts:
                continue
            digest.update(path.relative_to(base).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    digest.update(platform.python_version().encode())
    for name in _DISTRIBUTIONS:
        try:
            digest.update(f"{name}=={version(name)}".encode())
        except PackageNotFoundError:
            digest.update(f"{name} absent".encode())
    return digest.hexdigest()[:16]


def part_version(config: Any, *, seed: int, device: str) -> dict[str, Any]:
    """What must match for a finished part to be kept: ``{"config", "code", "seed", "device"}``."""
    return {"config": config_hash(config), "code": code_version(), "seed": seed, "device": device}


def kept_parts(
    previous: Mapping[str, Any], versions: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, Any], dict[str, str]]:
    """``(kept, rerun)`` for the parts of ``versions`` against a stored results.json ``previous``.

    ``kept``: ``{part: {"metrics", "seconds"}}`` of parts finished with the same
    version; ``rerun``: ``{part: why}`` for the others.
    """
    info = previous.get("run_info", {})
    stored_versions = info.get("part_versions", {})
    failed = info.get("failed_parts", {})
    metrics = previous.get("metrics", {})
    kept: dict[str, Any] = {}
    rerun: dict[str, str] = {}
    for part, wanted in versions.items():
        stored = stored_versions.get(part)
        if part in failed:
            rerun[part] = "failed before"
        elif part not in metrics:
            rerun[part] = "not finished"
        elif stored is None:
            rerun[part] = "no recorded version"
        elif stored != dict(wanted):
            changed = sorted(k for k in set(wanted) | set(stored) if stored.get(k) != wanted.get(k))
            rerun[part] = f"{', '.join(changed)} changed"
        else:
            kept[part] = {
                "metrics": metrics[part],
                "seconds": info.get("part_seconds", {}).get(part),
            }
    return kept, rerun
