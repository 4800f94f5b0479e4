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
- Layers not listed in ``layers`` are not merged: their neurons stay in their
  own network's exclusive group (nothing dropped).
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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cut_plugin.vocabulary import check_choice, check_int, check_number, check_task_mapping
from pam_plugin.activations import gather_samples, record_activations
from pam_plugin.architecture import Space
from pam_plugin.construction import Assignment, Prepared, build_network, space_of_layers
from pam_plugin.grouping import GROUPINGS, Grouping, GroupKey, Neuron, relevance_groups
from pam_plugin.information import check_labels, check_sigma2
from pam_plugin.merged import MergedNetwork
from pam_plugin.search import MAX_MEMORY, irrelevant_set

__all__ = ["PAMMerger"]


@dataclass(frozen=True, kw_only=True)
class PAMMerger:
    """Pruning-aware merging: ``PAMMerger(...).merge(networks, inputs, labels) -> MergedNetwork``.

    Args:
        alpha_conv: MI threshold (nats) of the irrelevant sets of conv layers
            (the paper: 0.01 for VGG on LFW, 0.2 for LeNet-5).
        alpha_fc: the same for linear layers (0.05 VGG, 0.15 LeNet-5).
        sigma2: noise variance of the KDE estimator (0.1).
        layers: names of the layers to merge (a conv/linear module name; in a
            ResNet stage any of its layers); ``None``: every hidden layer.
        grouping: ``"paper"`` (dropped / exclusive / shared) or ``"subsets"``.
        batch_size: forward batch size when recording activations.
        max_memory: bytes for the search's per-neuron kernels of one layer.
    """

    alpha_conv: float = 0.01
    alpha_fc: float = 0.05
    sigma2: float = 0.1
    layers: Sequence[str] | None = None
    grouping: Grouping = "paper"
    batch_size: int = 128
    max_memory: int = MAX_MEMORY

    def __post_init__(self) -> None:
        check_number("alpha_conv", self.alpha_conv, low=0.0)
        check_number("alpha_fc", self.alpha_fc, low=0.0)
        check_sigma2(self.sigma2)
        check_choice("grouping", self.grouping, GROUPINGS)
        check_int("batch_size", self.batch_size)
        check_int("max_memory", self.max_memory)
        if self.layers is not None:
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
        spaces = self._selected_spaces(prepared)
        if len(tasks) == 1 or not spaces:
            return {}
        activations = {
            t: {
                index: gather_samples(values)
                for index, values in record_activations(
                    prepared.graphs[t], arch, prepared.inputs, batch_size=self.batch_size, network=t
                ).items()
            }
            for t in tasks
        }
        raw = {t: gather_samples(raw[t]) for t in tasks}
        assignment: dict[int, dict[GroupKey, list[Neuron]]] = {}
        for space in spaces:
            pooled = torch.cat([activations[t][space.index] for t in tasks], dim=1)  # (B, N·d, k)
            alpha = self.alpha_conv if space.layer_type == "conv" else self.alpha_fc
            irrelevant = {
                t: irrelevant_set(
                    pooled, raw[t], alpha=alpha, sigma2=self.sigma2, max_memory=self.max_memory
                )
                for t in tasks
            }
            assignment[space.index] = relevance_groups(
                irrelevant, space.size, tasks, grouping=self.grouping
            )
        return assignment

    def _selected_spaces(self, prepared: Prepared) -> list[Space]:
        hidden = prepared.architecture.hidden_spaces
        if self.layers is None:
            return list(hidden)
        owner = space_of_layers(prepared.architecture)
        unknown = [name for name in self.layers if name not in owner]
        if unknown:
            raise ValueError(
                f"layers names unknown layer(s) {unknown}; the mergeable layers are {list(owner)}"
            )
        chosen = {owner[name] for name in self.layers}
        return [s for s in hidden if s.index in chosen]
