"""The CUT table: a pre-trained multi-task model pruned for a subset of its tasks.

Every method gets the same pre-trained model, the same decomposition (unselected
heads dropped, output layers protected), the same scoring data and the same
fine-tuning budget; only how parameters are chosen differs. Rows are methods,
columns per-task accuracy (before and after fine-tuning), parameters, MACs, CPU
latency (batch 1 and 64) and the method's own run time.
"""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

import adapters.torch_pruning as atp
from benchmarks.data import TaskData, batches, load_data
from benchmarks.measure import latency_ms, timed
from benchmarks.training import evaluate, pretrained
from cut_plugin import (
    apply_masks,
    finetune,
    mask_sparsity,
    prunable_weights,
    score_tasks,
    select_tasks,
)
from cut_plugin.fusion import top_mask

__all__ = ["CUT_METHODS", "CUTSuiteConfig", "run_cut_suite"]


@dataclass(frozen=True)
class CUTSuiteConfig:
    """One CUT table: model, data, task subsets, ratios, methods and budgets."""

    model: str = "resnet18"
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"width": 16, "blocks": [1, 1, 1, 1]}
    )
    data: str = "multi_head"
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    subsets: tuple[tuple[str, ...], ...] = (("digit", "parity"),)
    ratios: tuple[float, ...] = (0.5,)
    methods: tuple[str, ...] = ("cut", "disparse", "tp-magnitude", "tp-taylor")
    pretrain_epochs: int = 6
    score_batches: int = 20
    batch_size: int = 64
    finetune_steps: int = 200
    finetune_lr: float = 3e-4
    latency_repeats: int = 15

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in CUT_METHODS]
        if unknown:
            raise ValueError(f"methods has unknown {unknown}; choose from {sorted(CUT_METHODS)}")
        for ratio in self.ratios:
            if not 0.0 < ratio < 1.0:
                raise ValueError(f"ratios must be in (0, 1), got {ratio}")
        if not self.subsets:
            raise ValueError("subsets is empty: give at least one tuple of tasks")


@dataclass
class Context:
    """What a method gets: the pre-trained model, data, the selected tasks and the ratio."""

    model: nn.Module
    data: TaskData
    tasks: list[str]
    ratio: float
    config: CUTSuiteConfig
    seed: int

    def losses(self) -> dict[str, Callable]:
        return {t: fn for t, fn in self.data.losses().items() if t in self.tasks}

    def score_data(self) -> Iterator:
        return itertools.islice(
            batches(self.data.train, self.config.batch_size, seed=self.seed + 17),
            self.config.score_batches,
        )

    def example(self) -> torch.Tensor:
        return self.data.train.inputs[:1]

    def fresh_model(self) -> nn.Module:
        """The same architecture at a fresh random initialisation (for the at-init baselines)."""
        fresh = copy.deepcopy(self.model)
        torch.manual_seed(self.seed + 1)
        for module in fresh.modules():
            if hasattr(module, "reset_parameters") and module is not fresh:
                module.reset_parameters()
        return fresh


Method = Callable[[Context], tuple[nn.Module, dict[str, torch.Tensor] | None]]


def _cut(rule: str, granularity: str = "channel") -> Method:
    """CUT (``rule="vote"``) or DiSparse (``"any"``) through ``cut_prune``."""

    def method(ctx: Context) -> tuple[nn.Module, dict | None]:
        pruned = atp.cut_prune(
            ctx.model,
            ctx.example(),
            tasks=ctx.tasks,
            losses=ctx.losses(),
            data=list(ctx.score_data()),
            pruning_ratio=ctx.ratio,
            granularity=granularity,
            rule=rule,
            progress=False,
        )
        return pruned, getattr(pruned, "cut_pam_masks", None)

    return method


def _tp(importance: str) -> Method:
    def method(ctx: Context) -> tuple[nn.Module, None]:
        compact = atp.baseline_prune(
            ctx.model,
            ctx.example(),
            tasks=ctx.tasks,
            pruning_ratio=ctx.ratio,
            importance=importance,
            losses=ctx.losses(),
            data=list(ctx.score_data()),
        )
        return compact, None

    return method


def _global_masks(
    model: nn.Module, scores: dict[str, torch.Tensor], ratio: float
) -> dict[str, torch.Tensor]:
    names = list(scores)
    keep = top_mask(torch.cat([scores[n].reshape(-1) for n in names]), 1.0 - ratio)
    pieces = keep.split([scores[n].numel() for n in names])
    return {n: m.reshape(scores[n].shape) for n, m in zip(names, pieces, strict=True)}


def _magnitude(ctx: Context) -> tuple[nn.Module, dict]:
    """One-shot global magnitude pruning of the pre-trained model (the CUT paper's "LTH")."""
    selected = select_tasks(ctx.model, ctx.tasks)
    scores = {n: w.detach().abs() for n, w in prunable_weights(selected).items()}
    masks = _global_masks(selected, scores, ctx.ratio)
    return apply_masks(selected, masks, inplace=True), masks


def _snip_at_init(ctx: Context) -> tuple[nn.Module, dict]:
    """SNIP at a fresh initialisation: |w·∂(Σ_t L_t)/∂w| summed over tasks, global top."""
    selected = select_tasks(ctx.fresh_model(), ctx.tasks)
    per_task = score_tasks(selected, ctx.score_data(), ctx.losses(), progress=False)
    weights = prunable_weights(selected)
    scores = {n: sum(s[n] for s in per_task.values() if n in s) for n in weights}
    masks = _global_masks(selected, scores, ctx.ratio)  # type: ignore[arg-type]
    return apply_masks(selected, masks, inplace=True), masks


def _random_at_init(ctx: Context) -> tuple[nn.Module, dict]:
    selected = select_tasks(ctx.fresh_model(), ctx.tasks)
    generator = torch.Generator().manual_seed(ctx.seed + 2)
    scores = {
        n: torch.rand(w.shape, generator=generator) for n, w in prunable_weights(selected).items()
    }
    masks = _global_masks(selected, scores, ctx.ratio)
    return apply_masks(selected, masks, inplace=True), masks


def _scratch(ctx: Context) -> tuple[nn.Module, None]:
    """Control: CUT's compact architecture re-initialised, trained with the same budget."""
    compact, _ = _cut("vote")(ctx)
    torch.manual_seed(ctx.seed + 3)
    for module in compact.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return compact, None


def _nni_l1(ctx: Context) -> tuple[nn.Module, None]:
    """NNI's L1NormPruner on the selected model's trunk convs, then ``adapters.nni.speedup``."""
    from nni.compression.pruning import L1NormPruner

    from adapters.nni import speedup

    selected = select_tasks(ctx.model, ctx.tasks)
    protected = set(atp.output_layers(selected, ctx.example()).values())
    names = [
        n
        for n, m in selected.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and m not in protected
    ]
    config = [{"op_names": names, "sparse_ratio": ctx.ratio, "granularity": "out_channel"}]
    pruner = L1NormPruner(selected, config)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    return speedup(selected, masks, ctx.example()), None


CUT_METHODS: dict[str, Method] = {
    "scratch": _scratch,
    "nni-l1": _nni_l1,
    "cut": _cut("vote"),
    "disparse": _cut("any"),
    "cut-weight": _cut("vote", "weight"),
    "disparse-weight": _cut("any", "weight"),
    "tp-magnitude": _tp("magnitude"),
    "tp-taylor": _tp("taylor"),
    "magnitude-weight": _magnitude,
    "snip-init-weight": _snip_at_init,
    "random-init-weight": _random_at_init,
}
"""Method name → ``(Context) -> (pruned model, masks or None)``. ``-weight``: unstructured."""


def _measure(model: nn.Module, ctx: Context) -> dict[str, float]:
    x1 = ctx.data.test.inputs[:1]
    x64 = ctx.data.test.inputs[:64]
    macs, params = atp.count_macs(model, x1)
    return {
        "macs": macs,
        "params": params,
        "latency_b1_ms": latency_ms(model, x1, repeats=ctx.config.latency_repeats),
        "latency_b64_ms": latency_ms(model, x64, repeats=ctx.config.latency_repeats),
    }


def run_cut_suite(
    config: CUTSuiteConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    cache_dir: str | os.PathLike[str] = ".cache/cut-pam",
) -> dict[str, Any]:
    """Run every method on every subset × ratio; return ``{"config", "pretrained_accuracy", "rows"}``.

    The pre-trained model is trained once and cached in ``cache_dir``.
    """
    data = load_data(config.data, seed=seed, **config.data_kwargs)
    model = pretrained(
        config.model,
        data,
        seed=seed,
        cache_dir=cache_dir,
        model_kwargs=config.model_kwargs,
        epochs=config.pretrain_epochs,
        batch_size=config.batch_size,
        progress=progress,
    )
    base_accuracy = evaluate(model, data)
    rows: list[dict[str, Any]] = []
    cases = [
        (s, r, m) for s in config.subsets for r in config.ratios for m in ("dense", *config.methods)
    ]
    cases = [c for c in cases if c[2] != "dense" or c[1] == config.ratios[0]]
    bar = tqdm(cases, desc="CUT suite", disable=not progress)
    for subset, ratio, name in bar:
        bar.set_postfix(tasks="+".join(subset), ratio=ratio, method=name)
        ctx = Context(model, data, list(subset), ratio, config, seed)
        torch.manual_seed(seed)
        if name == "dense":
            (pruned, masks), seconds = (select_tasks(model, ctx.tasks), None), 0.0
        else:
            (pruned, masks), seconds = timed(lambda ctx=ctx, name=name: CUT_METHODS[name](ctx))
        before = evaluate(pruned, data)
        tuned = pruned
        if name != "dense" and config.finetune_steps > 0:
            train_batches = _cycle_batches(data, config.batch_size, seed)
            tuned = finetune(
                pruned,
                train_batches,
                ctx.losses(),
                steps=config.finetune_steps,
                lr=config.finetune_lr,
                masks=masks,
                progress=False,
            )
        after = evaluate(tuned, data)
        rows.append({
            "tasks": list(subset),
            "ratio": 0.0 if name == "dense" else ratio,
            "method": name,
            "granularity": "weight" if name.endswith("-weight") else "channel",
            "accuracy_before_finetune": {t: before[t] for t in subset},
            "accuracy": {t: after[t] for t in subset},
            "sparsity": mask_sparsity(masks) if masks else None,
            "method_seconds": seconds,
            **_measure(tuned, ctx),
        })  # fmt: skip
    return {"config": asdict(config), "pretrained_accuracy": base_accuracy, "rows": rows}


def _cycle_batches(data: TaskData, batch_size: int, seed: int) -> Iterator:
    for epoch in itertools.count():
        yield from batches(data.train, batch_size, seed=seed * 7919 + epoch)
