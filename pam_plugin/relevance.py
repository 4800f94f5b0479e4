"""Relative relevance: a grouping rule that still tells tasks apart when they are correlated.

PAM's rule (``pam_plugin.search``) grows, per task, the greedy set ``S_t`` of
neurons whose joint KDE information stays below α. With the paper's fixed
noise variance the bound saturates: as soon as a set holds one neuron whose
values spread over more than ~σ, every pair of samples looks distinct and
``I(Z_S; Y) = H(Y)``. Only near-constant neurons then fit in ``S_t``, they
are the same for every task, and the merge drops them instead of making
anything exclusive: on correlated tasks the grouping degenerates into "all
shared" (issue 15, cause a).

``relevance="relative"`` (:class:`pam_plugin.PAMMerger`) measures each pooled
neuron alone, on its own scale, and compares it with what the task's own
network has at that layer:

    D_i        pairwise squared distances of neuron i over the B samples
    D̃_i        D_i / median_{b≠j} D_i (the mean when the median is 0)
    r_ti       I(D̃_i; Y_t) / H(Y_t)        in [0, 1] (the same KDE bound, σ² = sigma2)
    m_t        mean of r_ti over the neurons of task t's network at this layer
    R(i)       {owner(i)} ∪ {t : r_ti >= threshold · m_t}

``R(i)`` are the tasks neuron ``i`` is relevant to (``pam_plugin.grouping``
turns them into groups). Scaling each neuron by its median distance removes
the saturation (a neuron's information no longer depends on its units); the
per-layer reference ``m_t`` makes the rule read "as useful to task t as t's
own neurons are here": generic early features come out relevant to every
task (shared), late task-specific features only to their own (exclusive).
A neuron always stays relevant to its own network's task, so nothing is
dropped: removing neurons is the pruner's job, which keeps the merged network
exact on each task before retraining wherever a layer's groups allow it.
A constant neuron has ``r = 0``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from cut_plugin.vocabulary import check_number
from pam_plugin.construction import Assignment, Prepared, space_groups
from pam_plugin.grouping import Grouping, GroupKey, Neuron, order_groups
from pam_plugin.information import (
    SIGMA2,
    LabelStructure,
    check_labels,
    check_sigma2,
    information_from_distances,
)

__all__ = ["keep_reachable", "neuron_relevance", "relative_irrelevant"]

CHUNK_ELEMENTS = 2**24
"""Kernel values (neurons × labels × B²) evaluated at once."""


def _scaled_distances(values: Tensor) -> Tensor:
    """``(n, B, B)`` squared distances of each neuron, divided by their off-diagonal median."""
    flat = values.permute(1, 0, 2)  # (n, B, k)
    norms = flat.square().sum(dim=2)
    distances = norms[:, :, None] + norms[:, None, :] - 2.0 * flat @ flat.transpose(1, 2)
    distances = distances.clamp_min_(0.0)
    size = distances.shape[1]
    rows, columns = torch.triu_indices(size, size, 1, device=distances.device)
    pairs = distances[:, rows, columns]  # (n, B·(B−1)/2)
    scale = pairs.median(dim=1).values
    scale = torch.where(scale > 0, scale, pairs.mean(dim=1))
    constant = scale <= 0
    distances = distances / torch.where(constant, torch.ones_like(scale), scale)[:, None, None]
    distances[constant] = 0.0
    return distances


def neuron_relevance(features: Tensor, labels: Tensor, *, sigma2: float = SIGMA2) -> Tensor:
    """``(n,)`` relevance ``r_i = I(D̃_i; Y) / H(Y)`` of each neuron alone, in ``[0, 1]``.

    ``features``: ``(B, n)`` or ``(B, n, k)`` (``k`` values per neuron and
    sample, e.g. a conv channel's map); ``labels``: class indices ``(B,)`` or
    multi-label 0/1 ``(B, L)``. Each neuron's distances are scaled by their
    median over sample pairs before the KDE bound of
    :mod:`pam_plugin.information`. 0 for a constant neuron or a constant label.
    """
    return _relevances(features, [labels], sigma2)[0]


def _relevances(features: Tensor, labels: Sequence[Tensor], sigma2: float) -> list[Tensor]:
    """:func:`neuron_relevance` for several label sets, the distances computed once."""
    if not isinstance(features, Tensor) or features.dim() not in (2, 3):
        raise TypeError("features must be a (B, n) or (B, n, k) Tensor")
    sigma2 = check_sigma2(sigma2)
    values = features.to(torch.float64).reshape(features.shape[0], features.shape[1], -1)
    samples, neurons = values.shape[0], values.shape[1]
    structures = [
        LabelStructure(check_labels(y, samples).to(values.device), torch.float64) for y in labels
    ]
    entropies = [float(s.log_prior.mean()) for s in structures]
    widest = max(s.num_labels for s in structures)
    step = max(1, CHUNK_ELEMENTS // ((1 + widest) * samples * samples))
    parts: list[list[Tensor]] = [[] for _ in structures]
    for start in range(0, neurons, step):
        distances = _scaled_distances(values[:, start : start + step])
        for k, structure in enumerate(structures):
            parts[k].append(information_from_distances(distances, structure, sigma2=sigma2))
    return [
        (torch.cat(p) / h).clamp_(0.0, 1.0)
        if h > 0
        else torch.zeros(neurons, dtype=torch.float64, device=values.device)
        for p, h in zip(parts, entropies, strict=True)
    ]


def relative_irrelevant(
    features: Tensor,
    labels: Mapping[str, Tensor],
    tasks: Sequence[str],
    *,
    threshold: float,
    sigma2: float = SIGMA2,
) -> dict[str, list[int]]:
    """Per task, the pooled neurons it finds irrelevant under the relative rule (module docstring).

    ``features``: ``(B, N·d, k)`` pooled activations of one layer, network
    ``tasks[k]`` holding neurons ``k·d … (k+1)·d − 1``; ``labels``: per task.
    Returns ``{t: sorted indices i with t ∉ R(i)}`` for
    :func:`pam_plugin.relevance_groups`; a neuron is never irrelevant to its own task.
    """
    check_number("threshold", threshold, low=0.0)
    width = features.shape[1] // len(tasks)
    if width * len(tasks) != features.shape[1]:
        raise ValueError(
            f"features hold {features.shape[1]} pooled neurons, not a multiple of {len(tasks)} tasks"
        )
    relevances = _relevances(features, [labels[t] for t in tasks], sigma2)
    irrelevant: dict[str, list[int]] = {}
    for index, (task, scores) in enumerate(zip(tasks, relevances, strict=True)):
        own = slice(index * width, (index + 1) * width)
        reference = float(scores[own].mean())
        below = scores < threshold * reference
        below[own] = False
        irrelevant[task] = torch.nonzero(below).flatten().tolist()
    return irrelevant


def keep_reachable(
    prepared: Prepared, assignment: Assignment, *, grouping: Grouping
) -> dict[int, dict[GroupKey, list[Neuron]]]:
    """``assignment`` with every group widened until a group of the next layer reads it.

    A group keyed ``K`` is read by the next layer's groups keyed ``J ⊆ K``
    (``pam_plugin.grouping``). When the next layer has none (say ``K = {A}``
    and the next layer is all shared), ``K``'s neurons would feed nothing and
    ``build_merged`` would lose them; here they join ``K ∪ J`` for the
    smallest such union (every task for ``grouping="paper"``), so each task's
    exclusive path stays reachable from its output. Spaces are visited from
    the last one back, so a widened group is itself read.
    """
    arch, tasks = prepared.architecture, prepared.tasks
    everyone = frozenset(tasks)
    groups_of = space_groups(prepared, assignment)
    consumers: dict[int, set[int]] = {}
    for step in arch.steps:
        if step.kind == "layer":
            consumers.setdefault(arch.space_of(step.inputs[0]).index, set()).add(step.space)
    result = {i: {k: list(v) for k, v in groups.items()} for i, groups in assignment.items()}
    for space in reversed(arch.hidden_spaces):
        if space.index not in result:
            continue
        readers = [key for c in consumers.get(space.index, ()) for key in groups_of[c]]
        widened: dict[GroupKey, list[Neuron]] = {}
        for key, neurons in result[space.index].items():
            if readers and not any(j <= key for j in readers):
                key = min((key | j for j in readers), key=len)
                key = everyone if grouping == "paper" else key
            widened.setdefault(key, []).extend(neurons)
        result[space.index] = {k: widened[k] for k in order_groups(widened, tasks)}
        groups_of[space.index] = result[space.index]
    return result
