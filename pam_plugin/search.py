"""Greedy search of the neurons irrelevant to a task (PAM step 3), incremental and batched.

For task ``t`` and the pooled neurons of a layer, PAM grows a set ``S_t``:

    S_t ← ∅;  repeat  i* = argmin_{i ∉ S_t} I(Z_{S_t ∪ {i}}; Y_t);
              stop if I(Z_{S_t ∪ {i*}}; Y_t) > α,  else S_t ← S_t ∪ {i*}

with ``I`` the KDE bound of :mod:`pam_plugin.information`. Squared distances
add up over neurons, ``D_{S ∪ {i}} = D_S + D_i``, so ``exp(−D_{S∪{i}}/2σ²) =
K_S ⊙ k_i``: the search keeps ``D_S`` and scores every candidate at once as
one batched matrix product of ``K_S`` (and ``K_S`` masked by each label's
same-class pattern) with the per-neuron kernels ``k_i``, ``O(n·B²)`` per step.

Implementation notes:
- The per-neuron kernels are laid out ``(B, B, n)`` (per sample ``b``, a
  ``(1 + L, B) @ (B, n)`` product: reads the kernels once, at memory speed),
  computed once and kept when they fit in ``max_memory`` bytes, else
  recomputed chunk by chunk at every step.
- Constant neurons (the same finite value on every sample, e.g. dead ReLUs)
  have ``k_i ≡ 1``: they share one kernel column, and adding one leaves
  ``D_S`` as it is, so that step keeps every score instead of recomputing them.
- Ties go to the lowest index, in both searches: scores within
  :func:`tie_tolerance` of the smallest (a few ulps of the computation's dtype)
  are ties, because the two searches sum the same terms in different orders and
  an exact tie (two neurons symmetric in the data) can come out one ulp apart.
  A NaN score is never picked.
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
    structure = LabelStructure(check_labels(labels, features.shape[0]).to(features.device), dtype)
    values = features.to(dtype).reshape(features.shape[0], features.shape[1], -1)
    if incremental:
        return _incremental(values, structure, float(alpha), sigma2, max_memory)
    return _naive(values, structure, float(alpha), sigma2)


def _neuron_kernels(values: Tensor, columns: Tensor, sigma2: float) -> Tensor:
    """``k_i[b, j] = exp(−‖z_ib − z_ij‖² / 2σ²)`` for the neurons ``columns``, laid out ``(B, B, c)``."""
    chunk = values[:, columns, :]  # (B, c, k)
    if chunk.shape[2] == 1:  # the (B, B, c) broadcast is faster without the trailing axis
        flat = chunk[:, :, 0]
        kernel = (flat[:, None, :] - flat[None, :, :]).square_()
    else:  # ‖a‖² + ‖b‖² − 2a·b in float64 (one matmul per neuron, no (B, B, c, k) tensor)
        wide = chunk.to(torch.float64).permute(1, 0, 2)  # (c, B, k)
        norms = wide.square().sum(dim=2)
        gram = torch.baddbmm(norms[:, :, None] + norms[:, None, :], wide, wide.transpose(1, 2),
                             alpha=-2.0)  # fmt: skip
        kernel = gram.clamp_min_(0.0).permute(1, 2, 0).to(values.dtype)
    return kernel.div_(-2.0 * sigma2).exp_()


def _constant(values: Tensor) -> Tensor:
    """``(n,)`` bool: the neurons whose finite value is the same on every sample (all distances 0)."""
    same = (values == values[:1]).all(dim=2).all(dim=0)
    return same & values[:1].isfinite().all(dim=2)[0]


def _incremental(
    values: Tensor, structure: LabelStructure, alpha: float, sigma2: float, max_memory: int
) -> tuple[list[int], list[float]]:
    num_samples, num_neurons, _ = values.shape
    constant = _constant(values)
    spare = [int(i) for i in torch.nonzero(constant).flatten()]  # share one kernel column
    # column c of the kernels is neuron columns[c]; the constants' column is the lowest one left
    columns = torch.nonzero(~constant).flatten()
    if spare:
        columns = torch.cat([columns, columns.new_tensor(spare[:1])])
    width = columns.numel()
    bytes_per_neuron = num_samples * num_samples * 8 * 3  # the float64 Gram and its copies
    chunk = max(1, min(width, max_memory // max(1, 4 * bytes_per_neuron)))
    bounds = [(start, min(start + chunk, width)) for start in range(0, width, chunk)]
    keep = width * num_samples * num_samples * values.element_size() <= max_memory
    stored = [_neuron_kernels(values, columns[a:b], sigma2) for a, b in bounds] if keep else []

    def kernels() -> Iterator[tuple[int, int, Tensor]]:
        for index, (a, b) in enumerate(bounds):
            yield a, b, stored[index] if keep else _neuron_kernels(values, columns[a:b], sigma2)

    # left[b, 0, j] = K_S[b, j]; left[b, 1 + l, j] = K_S[b, j] if y_bl == y_jl else 0
    masks = torch.cat(
        [
            torch.ones(1, num_samples, num_samples, dtype=torch.bool, device=values.device),
            structure.masks,
        ]
    ).permute(1, 0, 2).to(values.dtype).contiguous()  # fmt: skip
    set_distances = torch.zeros(num_samples, num_samples, dtype=values.dtype, device=values.device)
    index = columns.clone()  # neuron of each column, for ties: the lowest index wins
    scores = torch.empty(width, dtype=values.dtype, device=values.device)
    stale = True
    chosen: list[int] = []
    path: list[float] = []
    while len(chosen) < num_neurons:
        if stale:
            left = torch.exp(set_distances / (-2.0 * sigma2))[:, None, :] * masks  # (B, 1+L, B)
            for a, b, kernel in kernels():
                sums = torch.bmm(left, kernel)  # (B, 1 + L, c)
                scores[a:b] = information_from_sums(sums.transpose(1, 2), structure, sample_dim=0)
            scores[scores.isnan() | (index < 0)] = math.inf
        best_score = scores.min()
        if not best_score < math.inf or not best_score <= alpha:
            break
        near = scores <= best_score + tie_tolerance(float(best_score), scores.dtype)
        column = int(torch.where(near, index, num_neurons).argmin())
        best = int(index[column])
        chosen.append(best)
        path.append(float(scores[column]))
        if spare and best == spare[0]:
            # a constant neuron leaves the set's distances, so every score, as they are
            spare.pop(0)
            index[column] = spare[0] if spare else -1
            if not spare:
                scores[column] = math.inf
            stale = False
        else:
            index[column] = -1
            set_distances += squared_distances(values[:, best, :])
            stale = True
    return chosen, path


def tie_tolerance(score: float, dtype: torch.dtype) -> float:
    """How far above the smallest score a score still ties with it: 64 ulps of ``dtype`` at its size."""
    return 64 * torch.finfo(dtype).eps * max(1.0, abs(score))


def _naive(
    values: Tensor, structure: LabelStructure, alpha: float, sigma2: float
) -> tuple[list[int], list[float]]:
    chosen: list[int] = []
    path: list[float] = []
    remaining = list(range(values.shape[1]))
    while remaining:
        scores = {}
        for candidate in remaining:
            distances = squared_distances(values[:, [*chosen, candidate], :])
            score = float(information_from_distances(distances, structure, sigma2=sigma2))
            if not math.isnan(score):
                scores[candidate] = score
        if not scores:
            break
        smallest = min(scores.values())
        limit = smallest + tie_tolerance(smallest, values.dtype)
        if not smallest <= alpha:
            break
        best = min(c for c, s in scores.items() if s <= limit)
        best_score = scores[best]
        chosen.append(best)
        path.append(best_score)
        remaining.remove(best)
    return chosen, path
