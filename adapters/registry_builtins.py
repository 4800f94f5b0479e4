"""The built-in entries of :mod:`adapters.registry`: each imports its framework only when called.

Registered by ``adapters.registry``; nothing here imports a framework at import time.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "DEFAULT_CONFIG_LIST",
    "Lazy",
    "config_list_or_default",
    "fixing",
    "nni_norm",
    "nni_norm_prune",
    "nni_taylor",
    "tp_cut",
    "tp_prune_merged",
    "tp_prune_merged_gates",
    "tp_pruner",
]

DEFAULT_CONFIG_LIST = ({"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5},)


class Lazy:
    """``module.attr`` imported on first call or signature lookup (keeps imports lazy).

    ``fixed``: arguments always passed (and no config key); ``defaults``: zero-argument
    callables giving a default where the target has none or another one.
    """

    def __init__(
        self, module: str, attr: str, *, fixed: Mapping[str, Any] | None = None,
        defaults: Mapping[str, Callable[[], Any]] | None = None,
    ) -> None:  # fmt: skip
        self.module, self.attr = module, attr
        self.fixed = dict(fixed or {})
        self.defaults = dict(defaults or {})

    def target(self) -> Callable[..., Any]:
        found: Any = importlib.import_module(self.module)
        for part in self.attr.split("."):
            found = getattr(found, part)
        return found  # type: ignore[no-any-return]

    @property
    def __signature__(self) -> inspect.Signature:
        signature = inspect.signature(self.target())
        parameters = [
            p.replace(default=self.defaults[n]()) if n in self.defaults else p
            for n, p in signature.parameters.items()
            if n not in self.fixed
        ]
        # A parameter given a default must not precede one without: make them keyword-only.
        parameters = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
            else p
            for p in parameters
        ]
        return signature.replace(parameters=parameters)

    def __call__(self, **kwargs: Any) -> Any:
        merged = {n: make() for n, make in self.defaults.items() if n not in kwargs}
        return self.target()(**merged, **kwargs, **self.fixed)


def _check_tp_kwargs(tp_kwargs: Mapping[str, Any], what: str, taken: Iterable[str]) -> None:
    """Raise naming the valid keys when ``tp_kwargs`` holds one ``BasePruner`` does not take."""
    import torch_pruning as tp

    valid = set(inspect.signature(tp.pruner.BasePruner.__init__).parameters) - {
        "self",
        "model",
        "importance",
    }
    valid -= set(taken)
    unknown = sorted(set(tp_kwargs) - valid)
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} for {what}; valid Torch-Pruning keys are {sorted(valid)}"
        )


def _copy_for_nni(model: Any, evaluator: Any, inplace: bool) -> Any:
    from adapters.nni import plain_copy

    if evaluator is not None and not evaluator._initialization_complete:
        # The optimizer was made on the caller's parameters: record their names there.
        evaluator._init_optimizer_helpers(model)
    return model if inplace else plain_copy(model)


def config_list_or_default(
    config_list: Iterable[Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    return [
        copy.deepcopy(dict(c))
        for c in (DEFAULT_CONFIG_LIST if config_list is None else config_list)
    ]


def nni_norm(p: int) -> Callable[..., Any]:
    def build_norm(
        model: Any,
        config_list: list[dict[str, Any]] | None = None,
        evaluator: Any = None,
        inplace: bool = False,
    ) -> Any:
        from nni.compression.pruning import L1NormPruner, L2NormPruner

        pruner = L1NormPruner if p == 1 else L2NormPruner
        return pruner(
            _copy_for_nni(model, evaluator, inplace), config_list_or_default(config_list), evaluator
        )

    build_norm.__doc__ = (
        f"NNI's L{p}NormPruner on a copy of ``model`` (default: every conv/linear at 0.5)."
    )
    return build_norm


def nni_taylor(
    model: Any,
    evaluator: Any,
    config_list: list[dict[str, Any]] | None = None,
    training_steps: int = 1,
    inplace: bool = False,
) -> Any:
    """NNI's TaylorPruner on a copy of ``model``; ``evaluator`` trains it ``training_steps`` steps."""
    from nni.compression.pruning import TaylorPruner

    return TaylorPruner(
        _copy_for_nni(model, evaluator, inplace),
        config_list_or_default(config_list),
        evaluator,
        training_steps,
    )


def tp_pruner(importance: str) -> Callable[..., Any]:
    def build_pruner(
        model: Any,
        example_inputs: Any,
        pruning_ratio: float = 0.5,
        protect_outputs: bool = True,
        ignored_layers: list[Any] | None = None,
        inplace: bool = False,
        **tp_kwargs: Any,
    ) -> Any:
        import torch_pruning as tp

        from adapters.torch_pruning.protection import protected_layers
        from cut_plugin.vocabulary import as_example_inputs, check_ratio

        _check_tp_kwargs(
            tp_kwargs,
            f"pruner {importance!r}",
            ["example_inputs", "pruning_ratio", "ignored_layers"],
        )
        example = as_example_inputs(example_inputs, model)
        ignored = list(ignored_layers or [])
        if not inplace:  # Torch-Pruning prunes pruner.model in place: give it a copy
            memo: dict[int, Any] = {}
            model = copy.deepcopy(model, memo)
            ignored = [memo.get(id(m), m) for m in ignored]
        if protect_outputs:
            ignored += [
                m for m in protected_layers(model, example) if all(m is not k for k in ignored)
            ]
        scorer = (
            tp.importance.GroupMagnitudeImportance()
            if importance == "magnitude"
            else tp.importance.GroupTaylorImportance()
        )
        return tp.pruner.BasePruner(
            model, example, importance=scorer, pruning_ratio=check_ratio(pruning_ratio),
            ignored_layers=ignored, **tp_kwargs,
        )  # fmt: skip

    build_pruner.__doc__ = (
        f"Torch-Pruning's BasePruner with Group{importance.title()}Importance on a copy of ``model`` "
        "(``pruner.model``; ``inplace=True``: ``model`` itself); every task's output layer is ignored "
        "unless ``protect_outputs=False``"
        + (" (backpropagate through pruner.model before step())" if importance == "taylor" else "")
    )
    return build_pruner


def tp_cut(
    model: Any,
    example_inputs: Any,
    losses: Any,
    data: Any,
    tasks: list[str] | None = None,
    pruning_ratio: float = 0.5,
    rule: str = "vote",
    votes: int = 2,
    criterion: str = "taylor",
    max_batches: int | None = None,
    progress: bool = True,
    **tp_kwargs: Any,
) -> Any:
    """adapters.torch_pruning.CUTPruner (``tasks`` default: every task of ``losses``)."""
    from adapters.torch_pruning import CUTPruner

    _check_tp_kwargs(
        tp_kwargs, f"pruner with rule {rule!r} (torch_pruning)", ["example_inputs", "pruning_ratio"]
    )
    return CUTPruner(
        model, example_inputs, tasks=list(losses) if tasks is None else tasks, losses=losses, data=data,
        pruning_ratio=pruning_ratio, rule=rule, votes=votes, criterion=criterion,  # type: ignore[arg-type]
        max_batches=max_batches, progress=progress, **tp_kwargs,
    )  # fmt: skip


def fixing(function: Callable[..., Any], **fixed: Any) -> Callable[..., Any]:
    """``function`` with ``fixed`` arguments, which are then no config keys."""

    def call(**kwargs: Any) -> Any:
        return function(**kwargs, **fixed)

    signature = inspect.signature(function)
    call.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for n, p in signature.parameters.items() if n not in fixed]
    )
    call.__doc__ = f"{function.__doc__} with {fixed}"
    call.fixed = dict(fixed)  # type: ignore[attr-defined]
    return call


def tp_prune_merged(
    model: Any,
    example_inputs: Any,
    pruning_ratio: float = 0.5,
    criterion: str = "magnitude",
    importance: Any = None,
    pruned_groups: Any = "shared",
    data: Any = None,
    losses: Any = None,
    **tp_kwargs: Any,
) -> Any:
    """``adapters.torch_pruning.prune_merged`` of a merged network ``model`` (a pruned copy).

    ``criterion``: the registered Torch-Pruning importance (``"magnitude"``,
    ``"taylor"``) built fresh for this call, unless an ``importance`` object is given.
    (A config cannot say ``importance``: that key names the registry's importance kind.)
    """
    from adapters.registry import build
    from adapters.torch_pruning import prune_merged

    if importance is None:
        importance = build({"importance": criterion, "framework": "torch_pruning"})
    return prune_merged(
        model, example_inputs, importance=importance, pruning_ratio=pruning_ratio,
        data=data, losses=losses, pruned_groups=pruned_groups, **tp_kwargs,
    )  # fmt: skip


def tp_prune_merged_gates(
    model: Any,
    example_inputs: Any,
    data: Any,
    losses: Any,
    pruning_ratio: float = 0.09,
    pruned_groups: str = "shared",
    lr: float = 0.01,
    momentum: float = 0.9,
    nesterov: bool = True,
) -> Any:
    """``adapters.torch_pruning.prune_merged_gates`` of a merged network ``model``: one released
    PAM pruning iteration (train on ``data`` while scoring Taylor gates, one global threshold)."""
    from adapters.torch_pruning import prune_merged_gates

    return prune_merged_gates(
        model, example_inputs, data=data, losses=losses, pruning_ratio=pruning_ratio,
        pruned_groups=pruned_groups, lr=lr, momentum=momentum, nesterov=nesterov,
    )  # fmt: skip


def nni_norm_prune(p: int) -> Callable[..., Any]:
    """A one-shot L``p``-norm channel pruning with NNI, made smaller by ``adapters.nni.speedup``."""

    def prune(
        model: Any,
        example_inputs: Any,
        pruning_ratio: float = 0.5,
        tasks: list[str] | None = None,
        task_names: list[str] | None = None,
        protect_outputs: bool = True,
    ) -> Any:
        from nni.compression.pruning import L1NormPruner, L2NormPruner
        from torch import nn

        from adapters.nni import plain_copy, speedup
        from adapters.torch_pruning import output_layers
        from cut_plugin import select_tasks
        from cut_plugin.vocabulary import check_ratio

        ratio = check_ratio(pruning_ratio)
        selected = (
            plain_copy(model)
            if tasks is None
            else select_tasks(model, tasks, task_names=task_names)
        )
        protected = (
            set(output_layers(selected, example_inputs).values()) if protect_outputs else set()
        )
        names = [
            n
            for n, m in selected.named_modules()
            if isinstance(m, nn.Conv2d | nn.Linear) and m not in protected
        ]
        config = [{"op_names": names, "sparse_ratio": ratio, "granularity": "out_channel"}]
        pruner = (L1NormPruner if p == 1 else L2NormPruner)(selected, config)
        _, masks = pruner.compress()
        pruner.unwrap_model()
        return speedup(selected, masks, example_inputs)

    prune.__doc__ = (
        f"NNI's L{p}NormPruner on every conv/linear output channel of a copy of ``model`` "
        "(of ``select_tasks(model, tasks)`` when ``tasks`` is given; task output layers kept), "
        "then ``adapters.nni.speedup``: the compact model."
    )
    return prune
