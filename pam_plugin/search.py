"""Greedy search of the neurons irrelevant to a task (PAM step 3), incremental and batched.

For task ``t`` and the pooled neurons of a layer, PAM grows a set ``S_t``:

    S_t ← ∅;  repeat  i* = argmin_{i ∉ S_t} I(Z_{S_t ∪ {i}}; Y_t);
              stop if I(Z_{S_t ∪ {i*}}; Y_t) > α,  else S_t ← S_t ∪ {i*}

with ``I`` the KDE bound of :mod:`pam_plugin.information`. Squared distances
add up over neurons, ``D_{S ∪ {i}} = D_S + D_i``, so ``exp(−D_{S∪{i}}/2σ²) =
K_S ⊙ k_i``: the search keeps ``D_S`` and scores every candidate at once as
one batched matrix product of the per-neuron kernels ``k_i`` with ``K_S``
(and ``K_S`` masked by each label's same-class pattern), ``O(n·B²)`` per step.

Implementation notes:
- The per-neuron kernels ``(n, B, B)`` are computed once and kept when they fit
  in ``max_memory`` bytes, else recomputed chunk by chunk at every step.
- Ties go to the lowest index (as the naive reference does).
- ``incremental=False`` is the naive reference: every candidate's distances are
  recomputed from its set's activations (for tests and the speed benchmark).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from pam_plugin.information import (
    SIGMA2,
    LabelStructure,
    check_labels,
    check_sigma2,
    information_from_distances,
    information_from_sums,
    squared_distances,
)

__all__ = ["irrelevant_path", "irrelevant_set"]

MAX_MEMORY = 512 * 2**20
"""Default byte budget for the per-neuron kernels of one layer."""


def irrelevant_set(
    features: Tensor,
    labels: Tensor,
    *,
    alpha: float,
    sigma2: float = SIGMA2,
    incremental: bool = True,
    max_memory: int = MAX_MEMORY,
    dtype: torch.dtype = torch.float32,
) -> list[int]:
    """The greedy irrelevant set of one task, as neuron indices in the order they were added.

    ``irrelevant_path`` gives the same indices with ``I(Z_S; Y)`` after each addition.

    Args:
        features: ``(B, n)`` or ``(B, n, k)``: ``n`` neurons measured on ``B`` samples.
        labels: the task's class indices ``(B,)`` or multi-label 0/1 ``(B, L)``.
        alpha: the set's largest admissible ``I(Z_S; Y)`` in nats.
        incremental: ``False`` runs the naive reference search.
        max_memory: bytes for the kept per-neuron kernels (``n·B²`` values).
        dtype: the computation's float type.
    """
    return irrelevant_path(
        features, labels, alpha=alpha, sigma2=sigma2, incremental=incremental,
        max_memory=max_memory, dtype=dtype,
    )[0]  # fmt: skip


def irrelevant_path(
    features: Tensor,
    labels: Tensor,
    *,
    alpha: float,
    sigma2: float = SIGMA2,
    incremental: bool = True,
    max_memory: int = MAX_MEMORY,
    dtype: torch.dtype = torch.float32,
) -> tuple[list[int], list[float]]:
    """``irrelevant_set``'s indices and, per addition, ``I(Z_S; Y)`` of the set so far.

    The order does not depend on ``alpha`` (only where it stops), so the set
    for any smaller α is the prefix whose running maximum of scores stays <= α.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or math.isnan(alpha):
        raise TypeError(f"alpha must be a float, got {alpha!r}")
    if not isinstance(features, Tensor) or features.dim() not in (2, 3):
        raise TypeError("features must be a (B, n) or (B, n, k) Tensor")
    sigma2 = check_sigma2(sigma2)
    structure = LabelStructure(check_labels(labels, features.shape[0]), dtype)
    values = features.to(dtype).reshape(features.shape[0], features.shape[1], -1)
    if incremental:
        return _incremental(values, structure, float(alpha), sigma2, max_memory)
    return _naive(values, structure, float(alpha), sigma2)


def _neuron_kernels(values: Tensor, start: int, stop: int, sigma2: float) -> Tensor:
    """``k_i[b, j] = exp(−‖z_ib − z_ij‖² / 2σ²)`` for neurons ``start:stop``, laid out ``(B, c, B)``."""
    chunk = values[:, start:stop, :]  # (B, c, k)
    distances = (chunk[:, None, :, :] - chunk[None, :, :, :]).pow(2).sum(dim=3)  # (B, B, c)
    return torch.exp(distances / (-2.0 * sigma2)).permute(0, 2, 1).contiguous()


def _incremental(
    values: Tensor, structure: LabelStructure, alpha: float, sigma2: float, max_memory: int
) -> tuple[list[int], list[float]]:
    num_samples, num_neurons, depth = values.shape
    bytes_per_neuron = num_samples * num_samples * values.element_size() * max(2, depth)
    chunk = max(1, min(num_neurons, max_memory // max(1, 4 * bytes_per_neuron)))
    bounds = [(start, min(start + chunk, num_neurons)) for start in range(0, num_neurons, chunk)]
    keep = num_neurons * num_samples * num_samples * values.element_size() <= max_memory
    stored = [_neuron_kernels(values, a, b, sigma2) for a, b in bounds] if keep else []

    def kernels() -> Iterator[tuple[int, int, Tensor]]:
        for index, (a, b) in enumerate(bounds):
            yield a, b, stored[index] if keep else _neuron_kernels(values, a, b, sigma2)

    masks = structure.masks.to(values.dtype)  # (L, B, B)
    set_distances = torch.zeros(num_samples, num_samples, dtype=values.dtype)
    chosen: list[int] = []
    path: list[float] = []
    taken = torch.zeros(num_neurons, dtype=torch.bool)
    while len(chosen) < num_neurons:
        set_kernel = torch.exp(set_distances / (-2.0 * sigma2))
        # right[b, j, c]: c = 0 all samples, c = 1 + l same value of label l as sample b
        right = (
            torch.cat([set_kernel[None], set_kernel[None] * masks]).permute(1, 2, 0).contiguous()
        )
        scores = torch.empty(num_neurons, dtype=values.dtype)
        for a, b, kernel in kernels():
            sums = torch.bmm(kernel, right)  # (B, c, 1 + L)
            scores[a:b] = information_from_sums(sums, structure, sample_dim=0)
        scores[taken] = math.inf
        best = int(torch.argmin(scores))
        if not scores[best] <= alpha:
            break
        chosen.append(best)
        path.append(float(scores[best]))
        taken[best] = True
        set_distances += squared_distances(values[:, best, :])
    return chosen, path


def _naive(
    values: Tensor, structure: LabelStructure, alpha: float, sigma2: float
) -> tuple[list[int], list[float]]:
    chosen: list[int] = []
    path: list[float] = []
    remaining = list(range(values.shape[1]))
    while remaining:
        best, best_score = -1, math.inf
        for candidate in remaining:
            distances = squared_distances(values[:, [*chosen, candidate], :])
            score = float(information_from_distances(distances, structure, sigma2=sigma2))
            if score < best_score:
                best, best_score = candidate, score
        if not best_score <= alpha:
            break
        chosen.append(best)
        path.append(best_score)
        remaining.remove(best)
    return chosen, path
