"""The contract every benchmark part implements: config, run, render, summary, plots, needs.

A suite (``benchmarks/suites.json``) names parts and gives each its settings as
data; :meth:`Part.configure` turns those settings into the part's frozen config
dataclass, :attr:`Part.run` measures, and the other three read only the
returned metrics, so a ``results.json`` can be re-rendered without re-running.
:attr:`Part.needs` lists what the part needs from its config (packages, data
roots), checked before a suite starts (:mod:`benchmarks.needs`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.devices import device_kind
from benchmarks.needs import Need

__all__ = ["Part", "no_headline", "no_needs", "no_plots", "no_summary"]


def no_summary(metrics: Any) -> list[str]:
    """A part without summary lines."""
    return []


def no_plots(metrics: Any, out: Path, plt: Any) -> list[str]:
    """A part without plots."""
    return []


def no_headline(metrics: Any) -> list[dict[str, Any]]:
    """A part that makes no headline claim."""
    return []


def no_needs(config: Any) -> list[Need]:
    """A part that needs nothing beyond the base install."""
    return []


def _as_tuples(value: Any) -> Any:
    """JSON lists → tuples, nested (the configs' tuple fields are hashable and frozen)."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    return value


@dataclass(frozen=True)
class Part:
    """One benchmark part.

    ``config``: the frozen config dataclass (validated in ``__post_init__``).
    ``run(config, *, seed, progress) -> metrics`` (JSON-serialisable dict).
    ``render(metrics) -> markdown``; ``summary(metrics) -> lines`` (best method
    of each table and by how much); ``plots(metrics, out_dir, pyplot) -> file
    names written``; ``needs(config) -> [Need]`` (optional packages, data
    roots); ``headline(metrics) -> [entry]`` (the part's claims for
    ``results.json["headline"]``, BENCHMARKS.md: ``id``, ``setting``,
    ``value``, ``unit`` and where they apply ``ci95``, ``seeds``,
    ``baseline``, ``goal``). ``title`` heads the part's section of report.md.
    ``devices``: where the part can run (:mod:`benchmarks.devices`); a part that
    lists ``"cuda"`` takes ``run(..., device=...)``, the others are CPU
    measurements by design (latency, edge, memory) and run on the CPU under
    ``--device cuda`` too. ``cells``: the part's run takes ``cells=``
    (:class:`benchmarks.cells.Cells`): it stores each finished cell in the
    output folder, takes stored cells back on ``--resume`` and can compute
    its cells in worker processes (``--jobs``).
    """

    name: str
    title: str
    config: type
    run: Callable[..., dict[str, Any]]
    render: Callable[[Any], str]
    summary: Callable[[Any], list[str]] = no_summary
    plots: Callable[[Any, Path, Any], list[str]] = no_plots
    needs: Callable[[Any], list[Need]] = no_needs
    headline: Callable[[Any], list[dict[str, Any]]] = no_headline
    devices: tuple[str, ...] = ("cpu",)
    cells: bool = False

    def device_for(self, device: str) -> str:
        """Where this part runs when the suite runs on ``device`` (the CPU if it cannot go there)."""
        return device if device_kind(device) in self.devices else "cpu"

    def configure(self, settings: Mapping[str, Any] | None = None) -> Any:
        """The part's config from a suite's settings (JSON lists become tuples where a field is one)."""
        if settings is not None and not isinstance(settings, Mapping):
            raise TypeError(
                f"part {self.name!r}: settings must be a mapping, got {type(settings).__name__}"
            )
        fields = {f.name: f for f in dataclasses.fields(self.config)}
        unknown = sorted(set(settings or {}) - set(fields))
        if unknown:
            raise ValueError(
                f"part {self.name!r} has no setting(s) {unknown}; its settings are {sorted(fields)}"
            )
        values = {
            name: _as_tuples(value) if str(fields[name].type).startswith("tuple") else value
            for name, value in (settings or {}).items()
        }
        return self.config(**values)
