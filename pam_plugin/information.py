"""The pairwise-distance KDE bound on mutual information (Kolchinsky & Tracey), PAM step 2.

For ``B`` samples ``z_b`` of a set of neurons (dimension ``d``), Gaussian noise
of variance σ² (0.1 in the paper) and labels ``y``:

    H(Z)   = d/2 + d/2·log(2πσ²) − (1/B) Σ_b log[(1/B) Σ_j exp(−‖z_b − z_j‖² / (2σ²))]
    I(Z;Y) = H(Z) − Σ_v p(y=v) H(Z | y=v)

with ``H(Z | y=v)`` the same sum over the ``B_v`` samples of class ``v``. The
constant ``d/2 + d/2·log(2πσ²)`` cancels, so with ``K_bj = exp(−D_bj / 2σ²)``:

    I = (1/B) Σ_b [ log Σ_{j: y_j = y_b} K_bj − log Σ_j K_bj + log(B / B_{y_b}) ]

A multi-label task (labels ``(B, L)`` of 0/1) sums this over its ``L`` binary
labels. ``I`` only depends on the squared distances ``D``, which add up over
neurons: what makes PAM's greedy search incremental (``pam_plugin.search``).

Properties worth knowing: ``I <= H(Y)`` (the empirical label entropy, reached
when the samples are far apart); adding a neuron that is constant within each
class never lowers ``I``; in general ``I`` is **not** monotone in the set (a
neuron that separates samples of one class lowers it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "LabelStructure",
    "check_labels",
    "information_from_distances",
    "information_from_sums",
    "label_entropy",
    "mutual_information",
    "squared_distances",
]

SIGMA2 = 0.1
"""The paper's noise variance."""


def check_labels(labels: object, num_samples: int, *, task: str = "task") -> Tensor:
    """Return labels as a ``(B, L)`` int64 tensor (``L = 1`` for class indices), or raise.

    Accepts class indices ``(B,)`` (an integer or bool tensor) or multi-label
    ``(B, L)`` of 0/1 (any dtype). ``B`` must equal ``num_samples``.
    """
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels[{task!r}] must be a Tensor, got {type(labels).__name__}")
    if labels.dim() not in (1, 2):
        raise ValueError(
            f"labels[{task!r}] must be class indices (B,) or multi-label 0/1 (B, L); got shape "
            f"{tuple(labels.shape)}"
        )
    if labels.shape[0] != num_samples:
        raise ValueError(
            f"labels[{task!r}] has {labels.shape[0]} samples but the inputs have {num_samples}; "
            "give one label per input sample"
        )
    if labels.dim() == 1:
        if labels.is_floating_point() or labels.is_complex():
            raise TypeError(
                f"labels[{task!r}] are class indices and must be an integer tensor, got {labels.dtype}; "
                "use .long() (or pass multi-label 0/1 as a (B, L) tensor)"
            )
        return labels.long().unsqueeze(1)
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError(
            f"labels[{task!r}] of shape (B, L) are multi-label and must hold only 0 and 1"
        )
    return labels.long()


class LabelStructure:
    """Same-label masks and class priors of ``(B, L)`` labels, shared by every MI evaluation.

    ``masks``: ``(L, B, B)`` bool, ``masks[l, b, j] = (y_bl == y_jl)``;
    ``log_prior``: ``(B,)``, ``Σ_l log(B / B_{y_bl})``.
    """

    def __init__(self, labels: Tensor, dtype: torch.dtype = torch.float32) -> None:
        num_samples, num_labels = labels.shape
        self.num_labels = num_labels
        self.masks = labels.T[:, :, None] == labels.T[:, None, :]
        counts = self.masks.sum(dim=2).to(torch.float64)  # (L, B): B_{y_bl}
        self.log_prior = torch.log(num_samples / counts).sum(dim=0).to(dtype)


def label_entropy(labels: Tensor) -> float:
    """Empirical ``H(Y)`` in nats (summed over labels): the largest value ``I(Z; Y)`` can take."""
    structure = LabelStructure(check_labels(labels, labels.shape[0]), torch.float64)
    return float(structure.log_prior.mean())


def squared_distances(features: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances: ``(B, d)`` or ``(B, d, k)`` → ``(B, B)``."""
    flat = features.reshape(features.shape[0], -1)
    return (flat[:, None, :] - flat[None, :, :]).pow(2).sum(dim=2)


def information_from_sums(
    sums: Tensor, structure: LabelStructure, *, sample_dim: int = -2
) -> Tensor:
    """``I`` from kernel row sums ``(..., B, 1 + L)`` (samples along ``sample_dim``) → ``(...)``.

    ``sums[..., b, 0] = Σ_j K_bj``; ``sums[..., b, 1 + l] = Σ_{j: y_jl = y_bl} K_bj``.
    """
    logs = sums.log()
    terms = logs[..., 1:].sum(dim=-1) - structure.num_labels * logs[..., 0]
    return (
        terms.mean(dim=sample_dim + 1 if sample_dim < 0 else sample_dim)
        + structure.log_prior.mean()
    )


def information_from_distances(
    distances: Tensor, structure: LabelStructure, *, sigma2: float = SIGMA2
) -> Tensor:
    """``I`` from squared distances ``(..., B, B)`` → ``(...)``."""
    kernel = torch.exp(distances / (-2.0 * sigma2))
    same = (kernel.unsqueeze(-3) * structure.masks.to(kernel.dtype)).sum(dim=-1)  # (..., L, B)
    return information_from_sums(
        torch.cat([kernel.sum(dim=-1).unsqueeze(-2), same], dim=-2).transpose(-1, -2), structure
    )


def mutual_information(features: Tensor, labels: Tensor, *, sigma2: float = SIGMA2) -> float:
    """KDE bound on ``I(Z; Y)`` in nats for features ``(B, d)`` (or ``(B, d, k)``) and labels.

    ``labels``: class indices ``(B,)`` or multi-label 0/1 ``(B, L)`` (summed over labels).
    """
    if not isinstance(features, Tensor) or features.dim() < 2:
        raise TypeError("features must be a (B, d) or (B, d, k) Tensor")
    check_sigma2(sigma2)
    checked = check_labels(labels, features.shape[0])
    values = features.to(torch.promote_types(features.dtype, torch.float32))
    structure = LabelStructure(checked.to(values.device), values.dtype)
    return float(information_from_distances(squared_distances(values), structure, sigma2=sigma2))


def check_sigma2(sigma2: object, *, name: str = "sigma2") -> float:
    """Return a positive finite noise variance, or raise naming the value."""
    if isinstance(sigma2, bool) or not isinstance(sigma2, int | float):
        raise TypeError(
            f"{name} must be a positive float, got {sigma2!r} ({type(sigma2).__name__})"
        )
    if not math.isfinite(sigma2) or sigma2 <= 0:
        raise ValueError(
            f"{name} must be a positive finite float (the paper uses 0.1), got {sigma2!r}"
        )
    return float(sigma2)
