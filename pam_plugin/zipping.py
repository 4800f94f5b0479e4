"""MTZ's numerical core: layer-wise Hessians, zipping costs, zipped weights, greedy pairing.

Shapes: a layer's incoming weights on the chosen input channels are
``coefficients`` ``(d, P, c [+1])`` (``P`` kernel offsets of a conv, or
positions of a linear layer reading a flattened map; the last column is the
bias spread evenly over ``P``), a Hessian is ``(P or 1, c [+1], c [+1])``.
Used by :class:`pam_plugin.MTZMerger` (``pam_plugin.mtz``, ``pam_plugin.mtz_wiring``).

Rules (``Rule``) for one layer:
- ``"hessian"``: cost ``½ Δwᵀ (H_A⁻¹ + H_B⁻¹)⁻¹ Δw``, weight ``(H_A + H_B)⁻¹ (H_A w_i + H_B w_j)``;
- ``"euclidean"``: cost ``‖[w_i; b_i] − [w_j; b_j]‖``, the Hessian weight (the released
  code's fully-connected layers);
- ``"average"``: the Euclidean cost, the plain average of the zipped rows (the
  released code's first fully-connected layer, reading the flattened conv map).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from cut_plugin.vocabulary import index_tensor
from pam_plugin.activations import run_with_taps
from pam_plugin.architecture import tensor_attribute
from pam_plugin.construction import Prepared
from pam_plugin.grouping import Neuron

__all__ = [
    "FC_COSTS",
    "RULES",
    "FCCost",
    "Rule",
    "coefficients",
    "euclidean_costs",
    "fold_batchnorms",
    "layer_hessians",
    "layer_rule",
    "merged_rows",
    "pair_neurons",
    "restrict",
    "to_layout",
    "zip_costs",
]

Rule = Literal["hessian", "euclidean", "average"]
RULES: tuple[Rule, ...] = ("hessian", "euclidean", "average")
FCCost = Literal["hessian", "euclidean"]
FC_COSTS: tuple[FCCost, ...] = ("hessian", "euclidean")


def layer_rule(layer: nn.Module, factor: int, fc_cost: FCCost) -> Rule:
    """The rule of one layer: conv layers always ``hessian``; linear ones per ``fc_cost``.

    With ``fc_cost="euclidean"`` a linear layer reading a flattened map
    (``factor > 1``) takes the plain average, the others the Hessian weight
    (the released VGG script's ``fc6`` and ``fc7``).
    """
    if not isinstance(layer, nn.Linear) or fc_cost == "hessian":
        return "hessian"
    return "average" if factor > 1 else "euclidean"


def fold_batchnorms(prepared: Prepared) -> None:
    """Fold each BatchNorm into the conv/linear before it, in ``prepared``'s copies."""
    arch = prepared.architecture
    layers = {s.node: s for s in arch.steps if s.kind == "layer"}
    for step in arch.steps:
        if step.kind != "module" or not step.per_channel:
            continue
        for task in prepared.tasks:
            norm = prepared.modules[task][step.target]
            if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
                raise TypeError(
                    f"MTZ cannot zip across the depthwise conv {step.target!r}; use PAMMerger"
                )
            source = layers.get(step.inputs[0])
            if source is None or not norm.track_running_stats:
                raise TypeError(
                    f"MTZ folds BatchNorm {step.target!r} into the conv/linear before it; it must follow "
                    "one directly and track running statistics"
                )
            _fold(prepared.modules[task][source.target], norm)


def _fold(layer: nn.Module, norm: nn.modules.batchnorm._BatchNorm) -> None:
    with torch.no_grad():
        mean, var = tensor_attribute(norm, "running_mean"), tensor_attribute(norm, "running_var")
        scale = torch.rsqrt(var + norm.eps)
        shift = -mean * scale
        if norm.affine:
            gamma, beta = tensor_attribute(norm, "weight"), tensor_attribute(norm, "bias")
            scale, shift = scale * gamma, shift * gamma + beta
            gamma.fill_(1.0)
            beta.zero_()
        weight = tensor_attribute(layer, "weight")
        weight.mul_(scale.reshape(-1, *([1] * (weight.dim() - 1))))
        bias = (
            tensor_attribute(layer, "bias") if layer.bias is not None else torch.zeros_like(shift)
        )
        layer.bias = nn.Parameter(bias * scale + shift)
        mean.zero_()
        var.fill_(1.0 - norm.eps)


def layer_hessians(
    prepared: Prepared, task: str, batch_size: int, nodes: Collection[str] | None = None
) -> dict[str, Tensor]:
    """``{layer input node: (P, C+1, C+1)}``: ``E[x̃ x̃ᵀ]``; P = 1 (conv) or positions (flattened).

    Measured on ``prepared``'s current copy of ``task``'s network, at ``nodes``
    (default: the input of every conv/linear layer).
    """
    arch = prepared.architecture
    if nodes is None:
        nodes = {s.inputs[0] for s in arch.steps if s.kind == "layer"}
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = dict.fromkeys(nodes, 0)

    def tap(node: str) -> Callable[[Tensor], None]:
        factor = arch.factor(node)

        def accumulate(value: Tensor) -> None:
            if value.dim() > 2:  # (b, C, *spatial): samples x positions, one H
                x = value.transpose(0, 1).reshape(value.shape[1], -1).T[None]  # (1, n, C)
            else:  # (b, C·f): one H per position
                x = value.reshape(value.shape[0], -1, factor).permute(2, 0, 1)  # (f, b, C)
            x = torch.cat([x, torch.ones_like(x[..., :1])], dim=2).to(torch.float64)
            gram = x.transpose(1, 2) @ x
            sums[node] = sums[node] + gram if node in sums else gram
            counts[node] += x.shape[1]

        return accumulate

    run_with_taps(
        prepared.graphs[task], prepared.inputs, {n: tap(n) for n in nodes}, batch_size=batch_size
    )
    hessians = {node: sums[node] / counts[node] for node in nodes}
    for node, hessian in hessians.items():
        if not torch.isfinite(hessian).all():
            raise ValueError(
                f"the inputs of a layer of network {task!r} (node {node!r}) are NaN or infinite; "
                "check the network's weights and the inputs"
            )
    return hessians


def coefficients(layer: nn.Module, columns: Sequence[int], factor: int) -> Tensor:
    """Incoming weights on the chosen input channels as ``(d, P, c [+1 bias])`` float64."""
    weight = tensor_attribute(layer, "weight").detach().to(torch.float64)
    out = weight.shape[0]
    if isinstance(layer, nn.Linear):  # (d, C·f) → (d, f, c)
        result = weight.reshape(out, -1, factor)[:, list(columns), :].permute(0, 2, 1)
    else:  # (d, C, *kernel) → (d, k, c)
        result = weight[:, list(columns)].flatten(2).permute(0, 2, 1)
    if layer.bias is None:
        return result
    positions = result.shape[1]
    bias = (
        tensor_attribute(layer, "bias")
        .detach()
        .to(torch.float64)[:, None, None]
        .expand(out, positions, 1)
        / positions
    )
    return torch.cat([result, bias], dim=2)


def restrict(hessian: Tensor, columns: Sequence[int], bias: bool) -> Tensor:
    """``hessian`` ``(P, C+1, C+1)`` on the chosen input channels (and the constant, with ``bias``)."""
    index = [*columns, hessian.shape[-1] - 1] if bias else list(columns)
    return hessian[:, index][:, :, index]


def zip_costs(a: Tensor, b: Tensor, h_a: Tensor, h_b: Tensor, damping: float = 1e-6) -> Tensor:
    """MTZ costs ``(n, m)`` of zipping ``a`` ``(n, P, c)`` with ``b`` ``(m, P, c)`` under ``H`` ``(P or 1, c, c)``."""
    total = _damped(h_a + h_b, damping)
    metric = h_a @ torch.linalg.solve(total, h_b)
    metric = (metric + metric.transpose(1, 2)) / 2
    metric = metric.expand(a.shape[1], -1, -1)
    a_m = torch.einsum("npc,pcd->npd", a, metric)
    b_m = torch.einsum("npc,pcd->npd", b, metric)
    quad_a = (a_m * a).sum(dim=(1, 2))
    quad_b = (b_m * b).sum(dim=(1, 2))
    cross = a_m.reshape(a.shape[0], -1) @ b.reshape(b.shape[0], -1).T
    return 0.5 * (quad_a[:, None] + quad_b[None, :] - 2 * cross)


def euclidean_costs(a: Tensor, b: Tensor, has_bias: bool) -> Tensor:
    """``‖[w_i; b_i] − [w_j; b_j]‖`` ``(n, m)`` for coefficients ``a`` ``(n, P, c)``, ``b`` ``(m, P, c)``."""

    def flat(x: Tensor) -> Tensor:
        if not has_bias:
            return x.flatten(1)
        return torch.cat([x[..., :-1].flatten(1), x[..., -1].sum(dim=1, keepdim=True)], dim=1)

    return torch.cdist(flat(a), flat(b))


def _damped(matrix: Tensor, damping: float) -> Tensor:
    diagonal = matrix.diagonal(dim1=1, dim2=2)
    ridge = damping * diagonal.mean(dim=1).clamp_min(1e-12)
    return matrix + ridge[:, None, None] * torch.eye(
        matrix.shape[-1], dtype=matrix.dtype, device=matrix.device
    )


def _zipped(a: Tensor, b: Tensor, h_a: Tensor, h_b: Tensor, damping: float) -> Tensor:
    """``(H_A + H_B)⁻¹ (H_A a + H_B b)`` for paired rows ``(k, P, c)``."""
    half = (a - b) / 2
    rhs = torch.einsum("pcd,kpd->pck", (h_a - h_b).expand(a.shape[1], -1, -1), half)
    correction = torch.linalg.solve(_damped(h_a + h_b, damping).expand(a.shape[1], -1, -1), rhs)
    return (a + b) / 2 + correction.permute(2, 0, 1)


def _greedy_pairs(costs: Tensor, count: int) -> list[tuple[int, int]]:
    """``count`` one-to-one pairs ``(i, j)`` by increasing cost."""
    order = torch.argsort(costs.flatten(), stable=True).tolist()
    used_a: set[int] = set()
    used_b: set[int] = set()
    pairs: list[tuple[int, int]] = []
    width = costs.shape[1]
    for flat in order:
        if len(pairs) == count:
            break
        i, j = divmod(flat, width)
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((i, j))
    return pairs


def _merge_step(
    rule: Rule, weights: Tensor, other: Tensor, metric: Tensor, other_metric: Tensor,
    members: int, damping: float,
) -> Tensor:  # fmt: skip
    """Zip rows ``weights`` (already ``members`` networks) with the next network's ``other``."""
    if rule == "average":
        return (weights * members + other) / (members + 1)
    return _zipped(weights, other, metric, other_metric, damping)


def pair_neurons(
    coefficients: Mapping[str, Tensor],
    metrics: Mapping[str, Tensor],
    tasks: Sequence[str],
    count: int,
    damping: float,
    rule: Rule = "hessian",
    has_bias: bool = True,
) -> tuple[list[Neuron], Tensor]:
    """Zip the tasks' neurons one network at a time: the zipped neurons and their weights ``(k, P, c)``."""
    members: list[dict[str, int]] = [{tasks[0]: i} for i in range(coefficients[tasks[0]].shape[0])]
    weights, metric = coefficients[tasks[0]], metrics[tasks[0]]
    for done, task in enumerate(tasks[1:], start=1):
        if rule == "hessian":
            costs = zip_costs(weights, coefficients[task], metric, metrics[task], damping)
        else:
            costs = euclidean_costs(weights, coefficients[task], has_bias)
        pairs = _greedy_pairs(costs, min(count, len(members)))
        rows = index_tensor([i for i, _ in pairs], weights)
        cols = index_tensor([j for _, j in pairs], weights)
        weights = _merge_step(
            rule, weights[rows], coefficients[task][cols], metric, metrics[task], done, damping
        )
        metric = metric + metrics[task]
        members = [{**members[i], task: j} for i, j in pairs]
    return [tuple((t, m[t]) for t in tasks) for m in members], weights


def merged_rows(
    coefficients: Mapping[str, Tensor],
    metrics: Mapping[str, Tensor],
    neurons: Sequence[Neuron],
    damping: float,
    rule: Rule = "hessian",
) -> Tensor:
    """Weights ``(k, P, c)`` of the given zipped neurons (in order), zipped one network at a time."""
    tasks = [t for t, _ in neurons[0]]
    members = [dict(n) for n in neurons]
    weights = coefficients[tasks[0]][[m[tasks[0]] for m in members]]
    metric = metrics[tasks[0]]
    for done, task in enumerate(tasks[1:], start=1):
        other = coefficients[task][[m[task] for m in members]]
        weights = _merge_step(rule, weights, other, metric, metrics[task], done, damping)
        metric = metric + metrics[task]
    return weights


def to_layout(
    weights: Tensor, reference: nn.Module, has_bias: bool
) -> tuple[Tensor, Tensor | None]:
    """Coefficient rows ``(k, P, c [+1])`` as the layer's ``(weight, bias)`` layout and dtype.

    Linear: ``(k, c·f)``; conv: ``(k, c, *kernel)``; the bias is the sum of its spread parts.
    """
    bias = weights[:, :, -1].sum(dim=1) if has_bias else None
    body = weights[:, :, :-1] if has_bias else weights  # (k, P, c)
    template = tensor_attribute(reference, "weight")
    count = weights.shape[0]
    if isinstance(reference, nn.Linear):  # (k, f, c) → (k, c·f)
        layout = body.permute(0, 2, 1).reshape(count, -1)
    else:  # (k, kernel, c) → (k, c, *kernel)
        layout = body.permute(0, 2, 1).reshape(count, body.shape[2], *template.shape[2:])
    return layout.to(template.dtype), None if bias is None else bias.to(template.dtype)
