"""Names → pruners, importances and mergers; build one from a config (dict, JSON or YAML file).

A config names one object by its kind and gives its arguments; runtime objects
(the model, example inputs, losses, data, an NNI evaluator...) come as keywords::

    from adapters.registry import build
    pruner = build({"pruner": "cut", "framework": "nni", "rule": "vote", "votes": 2,
                    "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]},
                   model=model, losses=losses, data=batches)
    merger = build("merge.yaml")          # e.g. {merger: pam, alpha_conv: 0.01}

Kinds: ``importance`` (Torch-Pruning importances), ``pruner`` (Torch-Pruning or NNI
pruners, ``"framework"``: ``"torch_pruning"``, the default when the name exists
there, or ``"nni"``), ``merger`` (PAM / MTZ), ``prune`` (one call: model in, a new
compact model out; Torch-Pruning ``cut``/``disparse`` (``cut_prune``),
``magnitude``/``taylor``/``random`` (``baseline_prune``), ``merged``
(``prune_merged``), NNI ``l1``/``l2`` then ``speedup``). Built-in names: ``cut``,
``disparse`` (CUT with ``rule="any"``), ``pam``, ``mtz``, and the frameworks' own:
Torch-Pruning ``magnitude``/``taylor``, NNI ``l1``/``l2``/``taylor``.

Every entry is a callable whose keyword parameters are the valid config keys and
runtime objects; objects it does not take are ignored, config keys it does not
take are an error. Frameworks (and ``pam_plugin``) are imported only when an
entry that needs them is built.

Implementation notes: no entry changes the model it is given unless built with
``inplace=True`` — the NNI entries wrap a copy (as ``adapters.nni.CUTPruner`` does),
the Torch-Pruning ``magnitude``/``taylor`` pruners prune a copy (``pruner.model``) —
and the Torch-Pruning pruners never prune a task's output layer (``protect_outputs``).
Without ``"framework"`` a name resolves to its Torch-Pruning entry when there is one.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from adapters.registry_builtins import (
    Lazy,
    config_list_or_default,
    fixing,
    nni_norm,
    nni_norm_prune,
    nni_taylor,
    tp_cut,
    tp_prune_merged,
    tp_prune_merged_gates,
    tp_pruner,
)

__all__ = ["FRAMEWORKS", "KINDS", "available", "build", "load_config", "register"]

KINDS: tuple[str, ...] = ("importance", "pruner", "merger", "prune")
FRAMEWORKS: tuple[str, ...] = ("torch_pruning", "nni")
NAME = re.compile(r"[a-z][a-z0-9_-]*")


@dataclass(frozen=True)
class Entry:
    """One registered name: ``factory(**kwargs)`` builds it."""

    kind: str
    name: str
    framework: str | None
    factory: Callable[..., Any]


_REGISTRY: dict[tuple[str, str, str | None], Entry] = {}


def _check_kind(kind: Any) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    return str(kind)


def _check_framework(kind: str, framework: Any) -> str | None:
    if kind == "merger":
        if framework is not None:
            raise ValueError(f"mergers belong to no framework; got framework={framework!r}")
        return None
    if framework not in FRAMEWORKS:
        raise ValueError(
            f"framework of a {kind} must be one of {list(FRAMEWORKS)}, got {framework!r}"
        )
    return str(framework)


def register(
    kind: str, name: str, factory: Callable[..., Any] | None = None, *, framework: str | None = None
) -> Any:
    """Register ``factory`` as ``name`` of ``kind``; without ``factory``, a decorator.

    ``framework``: ``"torch_pruning"`` or ``"nni"`` for importances and pruners,
    None for mergers. ``name`` must be lower case (``[a-z][a-z0-9_-]*``) and new for
    that kind and framework.
    """
    kind = _check_kind(kind)
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(
            f"name must match [a-z][a-z0-9_-]* (lower case, e.g. 'my-pruner'), got {name!r}"
        )
    framework = _check_framework(kind, framework)
    if (kind, name, framework) in _REGISTRY:
        where = f" for framework {framework!r}" if framework else ""
        raise ValueError(f"{kind} {name!r} is already registered{where}; choose another name")

    def decorator(target: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(target):
            raise TypeError(
                f"register({kind!r}, {name!r}) needs a callable, got {type(target).__name__}"
            )
        if (kind, name, framework) in _REGISTRY:
            raise ValueError(f"{kind} {name!r} is already registered; choose another name")
        _REGISTRY[(kind, name, framework)] = Entry(kind, name, framework, target)
        return target

    return decorator if factory is None else decorator(factory)


def available(kind: str, *, framework: str | None = None) -> list[str]:
    """The registered names of ``kind`` (of one framework when given), sorted."""
    kind = _check_kind(kind)
    if framework is not None:
        framework = _check_framework(kind, framework)
    return sorted(
        {n for k, n, f in _REGISTRY if k == kind and (framework is None or f == framework)}
    )


def load_config(config: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """A config as a new dict: a mapping, or a ``.json`` / ``.yaml`` / ``.yml`` file path."""
    if isinstance(config, Mapping):
        return dict(config)
    if not isinstance(config, str | os.PathLike):
        raise TypeError(
            f"config must be a dict or a JSON/YAML file path, got {type(config).__name__}"
        )
    path = os.fspath(config)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ValueError(f"config file must end in .json, .yaml or .yml, got {path!r}")
    with open(path, encoding="utf-8") as handle:
        if suffix == ".json":
            loaded = json.load(handle)
        else:
            try:
                import yaml
            except ImportError as error:
                raise ImportError('YAML configs need PyYAML: pip install "pyyaml>=6"') from error
            loaded = yaml.safe_load(handle)
    if not isinstance(loaded, Mapping):
        raise ValueError(
            f"{path!r} must hold a mapping such as {{pruner: cut, ...}}, got {type(loaded).__name__}"
        )
    return dict(loaded)


def _resolve(kind: str, name: Any, framework: Any) -> Entry:
    if framework is not None:
        framework = _check_framework(kind, framework)
    names = available(kind)
    if name not in names:
        raise ValueError(f"unknown {kind} {name!r}; choose from {names}")
    frameworks = [f for k, n, f in _REGISTRY if k == kind and n == name]
    if framework is None:
        framework = "torch_pruning" if "torch_pruning" in frameworks else frameworks[0]
    if framework not in frameworks:
        raise ValueError(
            f"{kind} {name!r} is not available for framework {framework!r} (it is for {sorted(map(str, frameworks))}); "
            f"{framework} {kind}s: {available(kind, framework=framework)}"
        )
    return _REGISTRY[(kind, name, framework)]


def build(config: Mapping[str, Any] | str | os.PathLike[str], **objects: Any) -> Any:
    """Build the importance, pruner or merger a config names, with its arguments and ``objects``.

    Args:
        config: e.g. ``{"pruner": "cut", "framework": "nni", "config_list": [...], "rule":
            "vote"}`` or ``{"merger": "pam", "alpha_conv": 0.01}``, or a JSON/YAML file.
        objects: runtime objects (``model``, ``example_inputs``, ``losses``, ``data``,
            ``evaluator``, ...); each is passed when the entry takes it.

    Raises:
        ValueError: no or several kinds, an unknown name, framework or key (the
            message lists the valid ones), or a key given in both ``config`` and ``objects``.
        TypeError: an argument the entry needs is missing.
    """
    settings = load_config(config)
    kinds = [k for k in KINDS if k in settings]
    if len(kinds) != 1:
        raise ValueError(
            f"config must name exactly one of {list(KINDS)} (e.g. {{'pruner': 'cut'}}), got keys {list(settings)}"
        )
    kind = kinds[0]
    entry = _resolve(kind, settings.pop(kind), settings.pop("framework", None))
    parameters = inspect.signature(entry.factory).parameters
    named = {
        p.name
        for p in parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    # A fixed argument (disparse's rule) is no key, even for an entry taking **options.
    fixed = set(getattr(entry.factory, "fixed", ()))
    unknown = [k for k in settings if k in fixed or (k not in named and not open_ended)]
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} for {kind} {entry.name!r} ({entry.framework or 'plain'}); "
            f"valid keys are {sorted(named)}"
        )
    both = sorted(set(settings) & set(objects))
    if both:
        raise ValueError(f"{both} given both in the config and as objects; give each once")
    kwargs = {**{k: v for k, v in objects.items() if k in named}, **settings}
    missing = [
        p.name
        for p in parameters.values()
        if p.name in named and p.default is inspect.Parameter.empty and p.name not in kwargs
    ]
    if missing:
        raise TypeError(
            f"{kind} {entry.name!r} ({entry.framework or 'plain'}) needs {missing}; "
            f"pass them as build(config, {', '.join(f'{m}=...' for m in missing)})"
        )
    return entry.factory(**kwargs)


# The built-in names (imports inside each entry are lazy).
register(
    "importance", "cut", Lazy("adapters.torch_pruning", "CUTImportance"), framework="torch_pruning"
)
register(
    "importance",
    "disparse",
    Lazy("adapters.torch_pruning", "CUTImportance", fixed={"rule": "any"}),
    framework="torch_pruning",
)
register(
    "importance",
    "magnitude",
    Lazy("torch_pruning", "importance.GroupMagnitudeImportance"),
    framework="torch_pruning",
)
register(
    "importance",
    "taylor",
    Lazy("torch_pruning", "importance.GroupTaylorImportance"),
    framework="torch_pruning",
)
register("pruner", "cut", tp_cut, framework="torch_pruning")
register("pruner", "disparse", fixing(tp_cut, rule="any"), framework="torch_pruning")
register("pruner", "magnitude", tp_pruner("magnitude"), framework="torch_pruning")
register("pruner", "taylor", tp_pruner("taylor"), framework="torch_pruning")
register(
    "pruner",
    "cut",
    Lazy("adapters.nni", "CUTPruner", defaults={"config_list": config_list_or_default}),
    framework="nni",
)
register(
    "pruner",
    "disparse",
    Lazy(
        "adapters.nni",
        "CUTPruner",
        fixed={"rule": "any"},
        defaults={"config_list": config_list_or_default},
    ),
    framework="nni",
)
register("pruner", "l1", nni_norm(1), framework="nni")
register("pruner", "l2", nni_norm(2), framework="nni")
register("pruner", "taylor", nni_taylor, framework="nni")
register("merger", "pam", Lazy("pam_plugin", "PAMMerger"))
register("merger", "mtz", Lazy("pam_plugin", "MTZMerger"))
register("prune", "cut", Lazy("adapters.torch_pruning", "cut_prune"), framework="torch_pruning")
register(
    "prune",
    "disparse",
    Lazy("adapters.torch_pruning", "cut_prune", fixed={"rule": "any"}),
    framework="torch_pruning",
)
for _baseline in ("magnitude", "taylor", "random"):
    register(
        "prune",
        _baseline,
        Lazy("adapters.torch_pruning", "baseline_prune", fixed={"importance": _baseline}),
        framework="torch_pruning",
    )
register("prune", "merged", tp_prune_merged, framework="torch_pruning")
register("prune", "merged-gates", tp_prune_merged_gates, framework="torch_pruning")
register("prune", "l1", nni_norm_prune(1), framework="nni")
register("prune", "l2", nni_norm_prune(2), framework="nni")
