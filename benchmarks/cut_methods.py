"""The methods of the CUT table, each ``(Context) -> (pruned model, masks or None)``.

Structured methods and the frameworks' baselines are built through
``adapters.registry`` (kind ``prune``); the unstructured controls (global
magnitude, SNIP and random at initialisation) are plain ``cut_plugin`` masks.
Every method gets the same pre-trained model, decomposition, scoring data and
ratio; only how parameters are chosen differs.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adapters.registry import build
from adapters.torch_pruning import count_macs
from benchmarks.data import TaskData, batches
from benchmarks.devices import host, model_device
from cut_plugin import apply_masks, prunable_weights, read_record, score_tasks, select_tasks

__all__ = ["CUT_METHODS", "Context", "Method", "check_table", "global_masks", "reinitialised"]


@dataclass
class Context:
    """What a method gets: the pre-trained model, data, the selected tasks and the ratio.

    ``config`` is the part's ``CUTSuiteConfig`` (``batch_size``, ``score_batches``).
    """

    model: nn.Module
    data: TaskData
    tasks: list[str]
    ratio: float
    config: Any
    seed: int

    def losses(self) -> dict[str, Callable]:
        """The selected tasks' losses."""
        return {t: fn for t, fn in self.data.losses().items() if t in self.tasks}

    def score_data(self) -> Iterator:
        """The scoring batches (the same for every method)."""
        return itertools.islice(
            batches(self.data.train, self.config.batch_size, seed=self.seed + 17),
            self.config.score_batches,
        )

    def example(self) -> torch.Tensor:
        """One example input."""
        return self.data.train.inputs[:1]

    def fresh_model(self) -> nn.Module:
        """The same architecture at a fresh random initialisation (for the at-init baselines)."""
        return reinitialised(self.model, self.seed + 1)


Method = Callable[[Context], tuple[nn.Module, dict[str, torch.Tensor] | None]]


def layer_macs(ctx: Context) -> int:
    """The MACs every per-layer method reaches at ``ctx.ratio`` (Torch-Pruning's local widths)."""
    uniform = build({"prune": "random", "framework": "torch_pruning"}, model=ctx.model,
                    example_inputs=ctx.example(), tasks=ctx.tasks, pruning_ratio=ctx.ratio)  # fmt: skip
    return count_macs(uniform, ctx.example())[0]


def registered(
    name: str, *, framework: str, fresh: bool = False, equal_macs: bool = False, **settings: Any
) -> Method:
    """The registry's ``prune`` entry ``name`` under the table's protocol.

    ``fresh``: scored and pruned at a fresh initialisation (DiSparse's static variant).
    ``equal_macs``: instead of ``ctx.ratio``, the MAC budget the per-layer methods reach
    at that ratio (:func:`layer_macs`), for methods whose ratio allocates globally.
    """
    config = {"prune": name, "framework": framework, **settings}

    def method(ctx: Context) -> tuple[nn.Module, dict | None]:
        budget = {"target_macs": layer_macs(ctx)} if equal_macs else {"pruning_ratio": ctx.ratio}
        pruned = build(
            config,
            model=ctx.fresh_model() if fresh else ctx.model,
            example_inputs=ctx.example(),
            tasks=ctx.tasks,
            losses=ctx.losses(),
            data=list(ctx.score_data()),
            progress=False,
            **budget,
        )
        # Unstructured CUT keeps zeros only while finetune(masks=...) holds them there.
        record = read_record(pruned) if settings.get("granularity") == "weight" else None
        return pruned, None if record is None else record.masks

    return method


def reinitialised(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with every submodule's ``reset_parameters()`` run under ``seed``.

    Drawn on the host and moved back, so a seed gives the same weights on every device.
    """
    device = model_device(model)
    fresh = copy.deepcopy(model).cpu()
    torch.manual_seed(seed)
    with host():
        for module in fresh.modules():
            if hasattr(module, "reset_parameters") and module is not fresh:
                module.reset_parameters()
    return fresh.to(device)


def global_masks(scores: Mapping[str, torch.Tensor], ratio: float) -> dict[str, torch.Tensor]:
    """Keep the ``round((1 - ratio) · n)`` largest scores over all tensors together (True = keep)."""
    names = list(scores)
    flat = torch.cat([scores[n].reshape(-1) for n in names])
    k = min(flat.numel(), max(0, round((1.0 - ratio) * flat.numel())))
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        keep[torch.topk(flat.float(), k, sorted=False).indices] = True
    pieces = keep.split([scores[n].numel() for n in names])
    return {n: m.reshape(scores[n].shape) for n, m in zip(names, pieces, strict=True)}


def magnitude(ctx: Context) -> tuple[nn.Module, dict]:
    """One-shot global magnitude pruning of the pre-trained model (the CUT paper's "LTH")."""
    selected = select_tasks(ctx.model, ctx.tasks)
    scores = {n: w.detach().abs() for n, w in prunable_weights(selected).items()}
    masks = global_masks(scores, ctx.ratio)
    return apply_masks(selected, masks, inplace=True), masks


def snip_at_init(ctx: Context) -> tuple[nn.Module, dict]:
    """SNIP at a fresh initialisation: |w·∂(Σ_t L_t)/∂w| summed over tasks, global top."""
    selected = select_tasks(ctx.fresh_model(), ctx.tasks)
    per_task = score_tasks(selected, ctx.score_data(), ctx.losses(), progress=False)
    weights = prunable_weights(selected)
    scores = {n: sum(s[n] for s in per_task.values() if n in s) for n in weights}
    masks = global_masks(scores, ctx.ratio)  # type: ignore[arg-type]
    return apply_masks(selected, masks, inplace=True), masks


def random_at_init(ctx: Context) -> tuple[nn.Module, dict]:
    """Random unstructured masks at a fresh initialisation."""
    selected = select_tasks(ctx.fresh_model(), ctx.tasks)
    generator = torch.Generator().manual_seed(ctx.seed + 2)
    scores = {
        n: torch.rand(w.shape, generator=generator, device="cpu")  # the same draw on any device
        for n, w in prunable_weights(selected).items()
    }
    masks = global_masks(scores, ctx.ratio)
    return apply_masks(selected, masks, inplace=True), masks


def scratch(ctx: Context) -> tuple[nn.Module, None]:
    """Control: CUT's compact architecture re-initialised, trained with the same budget."""
    compact, _ = CUT_METHODS["cut"](ctx)
    return reinitialised(compact, ctx.seed + 3), None


CUT_METHODS: dict[str, Method] = {
    "scratch": scratch,
    "nni-l1": registered("l1", framework="nni"),
    "cut": registered("cut", framework="torch_pruning", rule="vote"),
    "cut-global": registered(
        "cut", framework="torch_pruning", rule="vote", global_pruning=True, equal_macs=True
    ),
    "cut-magnitude": registered(
        "cut", framework="torch_pruning", rule="vote", criterion="magnitude"
    ),
    "cut-fisher": registered("cut", framework="torch_pruning", rule="vote", criterion="fisher"),
    # Opt-in channel criterion: Σ_b|Σ a·∂L_t/∂a| per output channel, no weight gradient.
    "cut-activation": registered(
        "cut", framework="torch_pruning", rule="vote", criterion="activation"
    ),
    "disparse": registered("disparse", framework="torch_pruning"),
    "disparse-pretrained": registered("disparse", framework="torch_pruning", criterion="magnitude"),
    "cut-weight": registered("cut", framework="torch_pruning", rule="vote", granularity="weight"),
    "disparse-weight": registered("disparse", framework="torch_pruning", granularity="weight"),
    "disparse-pretrained-weight": registered(
        "disparse", framework="torch_pruning", granularity="weight", criterion="magnitude"
    ),
    "disparse-static-weight": registered(
        "disparse", framework="torch_pruning", granularity="weight", fresh=True
    ),
    "tp-magnitude": registered("magnitude", framework="torch_pruning"),
    "tp-taylor": registered("taylor", framework="torch_pruning"),
    "magnitude-weight": magnitude,
    "snip-init-weight": snip_at_init,
    "random-init-weight": random_at_init,
}
"""Method name → ``(Context) -> (pruned model, masks or None)``. ``-weight``: unstructured.

``disparse`` is CUT's scores with DiSparse's any-rule; DiSparse's two released
variants are ``disparse-pretrained`` (per-task magnitude of the pre-trained
weights, any-rule) and ``disparse-static-weight`` (SNIP — ``|w·∂L_t/∂w|`` — at a
fresh initialisation, any-rule, then trained).
"""


def check_table(methods: Sequence[str], ratios: Sequence[float], subsets: Sequence[Any]) -> None:
    """A CUT table's methods are known, its ratios in (0, 1) and it has a task subset."""
    unknown = [m for m in methods if m not in CUT_METHODS]
    if unknown:
        raise ValueError(f"methods has unknown {unknown}; choose from {sorted(CUT_METHODS)}")
    for ratio in ratios:
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"ratios must be in (0, 1), got {ratio}")
    if not subsets:
        raise ValueError("subsets is empty: give at least one tuple of tasks")
