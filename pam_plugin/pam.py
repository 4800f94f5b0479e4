"""PAM, pruning-aware merging of single-task networks (He et al., 2021).

Given N networks of one architecture, each trained for one task on the same
kind of input, PAM builds one multitask network that a pruner can then shrink
so that **every** task combination runs with little computation. Per hidden
layer ``l`` (``pam_plugin.search``, ``pam_plugin.grouping``):

    Z_i        activation of pooled neuron i (N·d_l neurons) on one batch of inputs
    S_t        greedy set with I(Z_{S_t}; Y_t) <= α   (α_conv for conv, α_fc for linear)
    P          = ∩_t S_t                               dropped
    E_t        = (∩_{s≠t} S_s) \\ P                      exclusive to t
    C          = the rest                              shared

``C^l`` reads ``C^{l−1}``; ``E_t^l`` reads ``E_t^{l−1} ∪ C^{l−1}``; task ``t``'s
output reads ``E_t ∪ C``; weights are the originals' (block-diagonal).

Implementation notes (deviations from the authors' TensorFlow code):
- ``grouping="subsets"`` (beyond the paper): one group per set of tasks a
  neuron is relevant to; a group reads the groups whose task set contains its own.
- Residual networks: a ResNet stage is one channel space (its additions join
  the operands), grouped once; its neurons are measured at every activation
  of the stage (``pam_plugin.activations``).
- Layers not listed in ``layers`` are not merged (nothing dropped).
  ``unmerged="exclusive"`` (the default) keeps each neuron in its own
  network's exclusive group: exact, and a task subset then runs only its own
  networks' neurons there, so it is never costlier. ``unmerged="shared"`` puts
  every neuron in the shared group, as the official code does (there, the
  pruner then shrinks them as shared neurons). A shared group reads only the
  shared group before it, so a merged layer's exclusive groups followed by a
  shared unmerged layer are unreachable and removed: the official ranges end
  at the last hidden layer.
- Conv neurons: ``summary="max"`` (the default, kept for compatibility)
  measures a channel by its global spatial max; ``summary="map"`` by its whole
  flattened map, as the official code really does (``pam_plugin.activations``).
  The α scale depends on the summary: MI over ``H·W`` dimensions is far
  larger, so the official α (LeNet-5 0.2/0.15, VGG-16 7/6 and 8.13/8.6) belong
  with ``"map"``; use :meth:`PAMMerger.preset` for the released settings.
- A layer whose merge drops more than ``max_dropped`` of its pooled neurons
  (irrelevant to every task) warns, or raises with ``on_dropped="raise"``,
  naming the largest α that would drop at most that fraction.
- ``relevance="relative"`` (beyond the paper, ``pam_plugin.relevance``):
  each neuron is measured alone on its own scale and is relevant to a task
  when it is at least ``relative_threshold`` times as informative about it
  as the task's own network's neurons are at that layer; a neuron always
  stays relevant to its own task (nothing is dropped), and a group no group
  of the next layer would read is widened until one does (``keep_reachable``).
  The paper's set rule
  saturates on correlated tasks (every varying neuron looks relevant to
  every task), this one does not; α and ``max_dropped`` are then unused.
- Labels are class indices (or multi-label 0/1) as given; the official code
  uses one-vs-rest ±1 per binary attribute, MI summed over a task's labels.
- One network (N = 1): there is nothing to merge; the result computes it
  exactly (dropping its irrelevant neurons is the pruner's job).
- Joint retraining while pruning (the paper's step 6) is left to the caller:
  ``adapters.torch_pruning.prune_merged`` and :func:`pam_plugin.retrain`.
- Data-parallel: when a ``torch.distributed`` process group is initialised, each
  rank passes its shard of ``inputs`` and ``labels``; activations and labels are
  gathered in rank order, so every rank builds the network a single process
  builds from all shards.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from cut_plugin.vocabulary import check_choice, check_int, check_number, check_task_mapping
from pam_plugin.activations import SUMMARIES, Summary, gather_samples, record_activations
from pam_plugin.architecture import Space
from pam_plugin.construction import Assignment, Prepared, build_network, space_of_layers
from pam_plugin.grouping import GROUPINGS, Grouping, GroupKey, Neuron, relevance_groups
from pam_plugin.information import check_labels, check_sigma2
from pam_plugin.merged import MergedNetwork
from pam_plugin.relevance import keep_reachable, relative_irrelevant
from pam_plugin.search import MAX_MEMORY, irrelevant_path

__all__ = ["PAM_PRESETS", "PAMMerger"]

Unmerged = Literal["exclusive", "shared"]
UNMERGED: tuple[Unmerged, ...] = ("exclusive", "shared")
OnDropped = Literal["warn", "raise"]
Relevance = Literal["set", "relative"]
RELEVANCES: tuple[Relevance, ...] = ("set", "relative")

PAM_PRESETS: dict[str, dict[str, Any]] = {
    # LeNet-5 (Fashion-MNIST 0–4 / 5–9): every hidden layer at α 0.2 / 0.15
    "lenet5": {"alpha_conv": 0.2, "alpha_fc": 0.15, "layers": None},
    # the later LeNet-5 run: the second conv layer only
    "lenet5-c2": {"alpha_conv": 0.2, "alpha_fc": 0.15, "layers": slice(1, 2)},
    # VGG-16, LFW 5 attribute groups: c5_2 … f7 (the last 4 hidden layers)
    "vgg16-lfw": {"alpha_conv": 7.0, "alpha_fc": 6.0, "layers": slice(-4, None)},
    # the earlier LFW run
    "vgg16-lfw-early": {"alpha_conv": 0.8, "alpha_fc": 0.8, "layers": slice(-4, None)},
    # VGG-16, CelebA attribute groups: c4_3 … f7 (the last 6 hidden layers)
    "vgg16-celeba": {"alpha_conv": 8.13, "alpha_fc": 8.6, "layers": slice(-6, None)},
    # the 3-task LFW run of f7 alone
    "vgg16-lfw3-f7": {"alpha_conv": 0.01, "alpha_fc": 0.05, "layers": slice(-1, None)},
}
"""The official runs' α and layer ranges (``../shared/METHODS.md``), all with
``summary="map"`` and ``unmerged="shared"`` as the official code measures and wires.
A range is a slice over the hidden conv/linear layers in execution order."""


@dataclass(frozen=True, kw_only=True)
class PAMMerger:
    """Pruning-aware merging: ``PAMMerger(...).merge(networks, inputs, labels) -> MergedNetwork``.

    Args:
        alpha_conv: MI threshold (nats) of the irrelevant sets of conv layers
            (the paper: 0.01 for VGG on LFW, 0.2 for LeNet-5).
        alpha_fc: the same for linear layers (0.05 VGG, 0.15 LeNet-5).
        sigma2: noise variance of the KDE estimator (0.1).
        layers: names of the layers to merge (a conv/linear module name; in a
            ResNet stage any of its layers), or a ``slice`` over the hidden
            layers in execution order (``slice(-4, None)``: the last four);
            ``None``: every hidden layer.
        grouping: ``"paper"`` (dropped / exclusive / shared) or ``"subsets"``.
        batch_size: forward batch size when recording activations.
        max_memory: bytes for the search's per-neuron kernels of one layer.
        summary: a conv neuron per sample: ``"max"`` (global spatial max) or
            ``"map"`` (its flattened map, the official code; α on a larger scale).
        unmerged: layers outside ``layers``: ``"exclusive"`` (each network's
            own group, exact and cheapest per combination) or ``"shared"``
            (every neuron shared, the official code).
        max_dropped: the largest fraction of a layer's pooled neurons a merge
            may drop (irrelevant to every task) before it warns or raises;
            ``None``: no check.
        on_dropped: ``"warn"`` or ``"raise"`` (``ValueError``) past ``max_dropped``.
        relevance: ``"set"`` (the paper's greedy irrelevant sets at α) or
            ``"relative"`` (each neuron alone, against the task's own network's
            neurons at the layer; ``pam_plugin.relevance``).
        relative_threshold: with ``relevance="relative"``, the fraction of the
            task's own neurons' mean relevance a neuron needs to be relevant to it.
    """

    alpha_conv: float = 0.01
    alpha_fc: float = 0.05
    sigma2: float = 0.1
    layers: Sequence[str] | slice | None = None
    grouping: Grouping = "paper"
    batch_size: int = 128
    max_memory: int = MAX_MEMORY
    summary: Summary = "max"
    unmerged: Unmerged = "exclusive"
    max_dropped: float | None = 0.5
    on_dropped: OnDropped = "warn"
    relevance: Relevance = "set"
    relative_threshold: float = 0.5

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> PAMMerger:
        """The merger of an official run (:data:`PAM_PRESETS`), any field overridden.

        E.g. ``PAMMerger.preset("lenet5")`` or ``PAMMerger.preset("vgg16-lfw", grouping="subsets")``.
        """
        check_choice("preset", name, tuple(PAM_PRESETS))
        settings = {"summary": "map", "unmerged": "shared", **PAM_PRESETS[name], **overrides}
        return cls(**settings)

    def __post_init__(self) -> None:
        check_number("alpha_conv", self.alpha_conv, low=0.0)
        check_number("alpha_fc", self.alpha_fc, low=0.0)
        check_sigma2(self.sigma2)
        check_choice("grouping", self.grouping, GROUPINGS)
        check_int("batch_size", self.batch_size)
        check_int("max_memory", self.max_memory)
        check_choice("summary", self.summary, SUMMARIES)
        check_choice("unmerged", self.unmerged, UNMERGED)
        check_choice("on_dropped", self.on_dropped, ("warn", "raise"))
        check_choice("relevance", self.relevance, RELEVANCES)
        check_number("relative_threshold", self.relative_threshold, low=0.0)
        if self.max_dropped is not None:
            check_number("max_dropped", self.max_dropped, low=0.0, high=1.0)
        if isinstance(self.layers, slice):
            bounds = (self.layers.start, self.layers.stop, self.layers.step)
            if not all(
                b is None or (isinstance(b, int) and not isinstance(b, bool)) for b in bounds
            ):
                raise TypeError(f"layers as a slice takes int bounds, got {self.layers!r}")
        elif self.layers is not None:
            if isinstance(self.layers, str) or not all(isinstance(n, str) for n in self.layers):
                raise TypeError(
                    f"layers must be a list of layer names or None, got {self.layers!r}"
                )
            object.__setattr__(self, "layers", tuple(self.layers))

    def merge(
        self, networks: Mapping[str, nn.Module], inputs: Tensor, labels: Mapping[str, Tensor]
    ) -> MergedNetwork:
        """Merge ``networks`` (``{task: network}``, left untouched) into one multitask network.

        ``inputs``: ``(B, ...)`` shared inputs (the paper: one batch of 128);
        ``labels``: ``{task: class indices (B,) or multi-label 0/1 (B, L)}``.
        """
        prepared = Prepared(networks, inputs, min_samples=2)
        return build_network(prepared, self._assign(prepared, labels))

    def groups(
        self, networks: Mapping[str, nn.Module], inputs: Tensor, labels: Mapping[str, Tensor]
    ) -> dict[str, dict[GroupKey, list[Neuron]]]:
        """The groups ``merge`` would build: ``{layer module name: {group key: neurons}}``.

        A layer is named by its conv/linear module (a ResNet stage by its first
        layer); the result can be given to :func:`pam_plugin.build_merged`.
        """
        prepared = Prepared(networks, inputs, min_samples=2)
        names = {s.index: s.name for s in prepared.architecture.hidden_spaces}
        return {
            names[i]: {k: list(v) for k, v in g.items()}
            for i, g in self._assign(prepared, labels).items()
        }

    def _assign(self, prepared: Prepared, labels: Mapping[str, Tensor]) -> Assignment:
        tasks, arch = prepared.tasks, prepared.architecture
        raw = check_task_mapping("labels", labels, tasks)
        num_samples = prepared.inputs.shape[0]
        for task in tasks:
            check_labels(raw[task], num_samples, task=task)
        if len(tasks) == 1:
            return {}
        spaces = self._selected_spaces(prepared)
        chosen = {s.index for s in spaces}
        everyone = frozenset(tasks)
        assignment: dict[int, dict[GroupKey, list[Neuron]]] = {}
        if self.unmerged == "shared":
            for space in arch.hidden_spaces:
                if space.index not in chosen:
                    neurons: list[Neuron] = [((t, i),) for t in tasks for i in range(space.size)]
                    assignment[space.index] = {everyone: neurons}
        if not spaces:
            return assignment
        activations = {
            t: {
                index: gather_samples(values)
                for index, values in record_activations(
                    prepared.graphs[t], arch, prepared.inputs, batch_size=self.batch_size,
                    network=t, summary=self.summary,
                ).items()
            }
            for t in tasks
        }  # fmt: skip
        raw = {t: gather_samples(raw[t]) for t in tasks}
        for space in spaces:
            pooled = torch.cat([activations[t][space.index] for t in tasks], dim=1)  # (B, N·d, k)
            if self.relevance == "relative":
                irrelevant = relative_irrelevant(
                    pooled, raw, tasks, threshold=self.relative_threshold, sigma2=self.sigma2
                )
            else:
                irrelevant = self._irrelevant_sets(space, pooled, raw, tasks)
            assignment[space.index] = relevance_groups(
                irrelevant, space.size, tasks, grouping=self.grouping
            )
        if self.relevance == "relative":
            return keep_reachable(prepared, assignment, grouping=self.grouping)
        return assignment

    def _irrelevant_sets(
        self, space: Space, pooled: Tensor, labels: Mapping[str, Tensor], tasks: Sequence[str]
    ) -> dict[str, list[int]]:
        """The paper's greedy irrelevant set per task at the layer's α (checked for drops)."""
        alpha = self.alpha_conv if space.layer_type == "conv" else self.alpha_fc
        paths = {
            t: irrelevant_path(
                pooled, labels[t], alpha=alpha, sigma2=self.sigma2, max_memory=self.max_memory
            )
            for t in tasks
        }
        irrelevant = {t: paths[t][0] for t in tasks}
        self._check_dropped(space, irrelevant, paths, alpha, len(tasks))
        return irrelevant

    def _check_dropped(
        self,
        space: Space,
        irrelevant: Mapping[str, list[int]],
        paths: Mapping[str, tuple[list[int], list[float]]],
        alpha: float,
        num_tasks: int,
    ) -> None:
        """Warn or raise when the merge drops more than ``max_dropped`` of the layer's neurons."""
        if self.max_dropped is None:
            return
        pooled = num_tasks * space.size
        dropped = len(set.intersection(*(set(v) for v in irrelevant.values())))
        if dropped <= self.max_dropped * pooled:
            return
        suggestion = suggest_alpha(paths, pooled, self.max_dropped)
        knob = "alpha_conv" if space.layer_type == "conv" else "alpha_fc"
        message = (
            f"PAM drops {dropped} of the {pooled} pooled neurons ({100 * dropped / pooled:.0f} %) "
            f"of layer {space.name!r}, irrelevant to every task at {knob}={alpha:g} "
            f"(summary={self.summary!r}); {knob} <= {suggestion:.4g} drops at most "
            f"{100 * self.max_dropped:.0f} %"
            + (" (or try summary='map', whose α scale is larger)" if self.summary == "max" else "")
            + "; max_dropped=None silences this check"
        )
        if self.on_dropped == "raise":
            raise ValueError(message)
        warnings.warn(message, UserWarning, stacklevel=5)

    def _selected_spaces(self, prepared: Prepared) -> list[Space]:
        hidden = prepared.architecture.hidden_spaces
        if self.layers is None:
            return list(hidden)
        if isinstance(self.layers, slice):
            return list(hidden)[self.layers]
        owner = space_of_layers(prepared.architecture)
        unknown = [name for name in self.layers if name not in owner]
        if unknown:
            raise ValueError(
                f"layers names unknown layer(s) {unknown}; the mergeable layers are {list(owner)}"
            )
        chosen = {owner[name] for name in self.layers}
        return [s for s in hidden if s.index in chosen]


def suggest_alpha(
    paths: Mapping[str, tuple[list[int], list[float]]], pooled: int, max_dropped: float
) -> float:
    """The largest α at which at most ``max_dropped`` of ``pooled`` neurons are dropped.

    ``paths``: per task the greedy order and scores at the current α; a smaller
    α selects the prefix whose running maximum of scores stays <= α.
    """
    prefixes: dict[str, list[tuple[float, int]]] = {}
    candidates = {0.0}
    for task, (_, scores) in paths.items():
        running, steps = -math.inf, []
        for length, score in enumerate(scores, start=1):
            running = max(running, score)
            steps.append((running, length))
        prefixes[task] = steps
        candidates |= {value for value, _ in steps if value > 0}
    for candidate in sorted(candidates, reverse=True):
        sets = []
        for task, (order, _) in paths.items():
            length = max((n for value, n in prefixes[task] if value <= candidate), default=0)
            sets.append(set(order[:length]))
        if len(set.intersection(*sets)) <= max_dropped * pooled:
            return candidate
    return 0.0
