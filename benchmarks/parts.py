"""Every benchmark part by name, in the order report.md shows them."""

from __future__ import annotations

from benchmarks import (
    cut_suite,
    dense_suite,
    edge_latency,
    latency_scaling,
    pam_speed,
    pam_suite,
    scoring_memory,
    scoring_speed,
)
from benchmarks.part import Part

__all__ = ["PART_ALIASES", "PARTS"]

PARTS: dict[str, Part] = {
    part.name: part
    for part in (
        dense_suite.PART,
        cut_suite.PART,
        scoring_speed.PART,
        pam_suite.PART,
        pam_speed.PART,
        latency_scaling.PART,
        edge_latency.PART,
        scoring_memory.PART,
    )
}
"""Part name → :class:`Part`; report.md's sections follow this order."""

PART_ALIASES: dict[str, str] = {"speedup": "latency_scaling"}
"""Old part names (and ``results.json`` metrics keys) → current ones."""
