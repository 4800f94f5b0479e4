"""MTZ, Multi-Task Zipping (He, Zhou & Thiele, NeurIPS 2018): PAM's merging baseline.

Layer by layer from the input, neurons of two networks are zipped into one
shared neuron. With ``x̃ = [layer input; 1]`` and per network the layer-wise
Hessian ``H = E[x̃ x̃ᵀ]`` on its own activations, zipping neuron ``i`` of A
(incoming weights ``w_i``) with neuron ``j`` of B costs

    Δ_ij = ½ (w_i − w_j)ᵀ (H_A⁻¹ + H_B⁻¹)⁻¹ (w_i − w_j)

and gives the weight ``w* = (H_A + H_B)⁻¹ (H_A w_i + H_B w_j)``. The pairs are
taken greedily by increasing cost, one-to-one, until ``k_l = round(share·d_l)``
are zipped. More than two networks: each next network is zipped into the
result (the zipped neurons carry ``H_A + H_B``).

Implementation notes (deviations from the authors' TensorFlow code):
- Zipped neurons form the shared group, which reads only the shared group of
  the layer below (PAM's wiring: a task subset must run without the other
  tasks' neurons); the weights compared and zipped are those on the zipped
  inputs. With ``share=1`` (default) every hidden layer is fully zipped and
  nothing is cut; with ``share < 1`` a zipped neuron loses its weights from
  unzipped inputs, and a layer after one with nothing zipped is not zipped.
  Unzipped neurons stay exclusive to their network.
- ``(H_A⁻¹ + H_B⁻¹)⁻¹`` is computed as ``H_A (H_A + H_B)⁻¹ H_B`` and
  ``w* = (w_i + w_j)/2 + (H_A + H_B)⁻¹ (H_A − H_B)(w_i − w_j)/2`` (equal, and
  exact when ``w_i = w_j``), with ``damping · mean diag`` added to ``H_A + H_B``.
- Conv layers: ``H`` is over the input channel vector at each position (one
  ``(C+1)²`` matrix shared by the kernel offsets); a linear layer after a
  Flatten has one ``H`` per spatial position. The bias is the weight of the
  constant 1, spread over the offsets and summed back.
- BatchNorm is folded into the conv/linear before it (eval statistics) and
  becomes an identity (running mean 0, var 1 − eps) in the merged network.
- A ResNet stage (one channel space written by several layers) is paired by
  its first layer; the other layers zip the same pairs.
- MTZ's light retraining after each layer is not done: retrain the result
  with :func:`pam_plugin.retrain` (or while pruning).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cut_plugin.vocabulary import check_int, check_number
from pam_plugin.activations import run_with_taps
from pam_plugin.architecture import Architecture, tensor_attribute
from pam_plugin.construction import Prepared, build_network, space_of_layers
from pam_plugin.grouping import GroupKey, Neuron, exclusive_groups
from pam_plugin.merged import MergedNetwork

__all__ = ["MTZMerger", "zip_costs"]


@dataclass(frozen=True, kw_only=True)
class MTZMerger:
    """Multi-task zipping: ``MTZMerger(share=...).merge(networks, inputs) -> MergedNetwork``.

    Args:
        share: fraction of each hidden layer's neurons zipped, a float for
            every layer or ``{layer module name: fraction}`` (unlisted layers: 0;
            a ResNet stage is named by any one of its layers).
        batch_size: forward batch size when measuring the Hessians.
        damping: relative ridge added to ``H_A + H_B`` before solving.
    """

    share: float | Mapping[str, float] = 1.0
    batch_size: int = 128
    damping: float = 1e-6

    def __post_init__(self) -> None:
        if isinstance(self.share, Mapping):
            for name, value in self.share.items():
                check_number(f"share[{name!r}]", value, low=0.0, high=1.0)
            object.__setattr__(self, "share", dict(self.share))
        else:
            check_number("share", self.share, low=0.0, high=1.0)
        check_int("batch_size", self.batch_size)
        check_number("damping", self.damping, low=0.0)

    def merge(self, networks: Mapping[str, nn.Module], inputs: Tensor) -> MergedNetwork:
        """Zip ``networks`` (``{task: network}``, left untouched) measured on ``inputs`` ``(B, ...)``."""
        prepared = Prepared(networks, inputs, min_samples=1)
        shares = self._shares(prepared.architecture)
        if len(prepared.tasks) == 1 or not any(shares.values()):
            return build_network(prepared, {})
        _fold_batchnorms(prepared)
        hessians = {t: _hessians(prepared, t, self.batch_size) for t in prepared.tasks}
        return _zip(prepared, hessians, shares, self.damping)

    def _shares(self, arch: Architecture) -> dict[int, float]:
        hidden = arch.hidden_spaces
        if not isinstance(self.share, Mapping):
            return {s.index: float(self.share) for s in hidden}
        owner = space_of_layers(arch)
        unknown = [name for name in self.share if name not in owner]
        if unknown:
            raise ValueError(
                f"share names unknown layer(s) {unknown}; the mergeable layers are {list(owner)}"
            )
        shares: dict[int, float] = {s.index: 0.0 for s in hidden}
        named: dict[int, str] = {}
        for name, value in self.share.items():
            index = owner[name]
            if index in named:
                raise ValueError(
                    f"share names the layers {named[index]!r} and {name!r}, which write one "
                    "channel space (a residual stage, zipped as one); give its share once"
                )
            named[index] = name
            shares[index] = float(value)
        return shares


def _fold_batchnorms(prepared: Prepared) -> None:
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


def _hessians(prepared: Prepared, task: str, batch_size: int) -> dict[str, Tensor]:
    """``{layer input node: (P, C+1, C+1)}``: ``E[x̃ x̃ᵀ]``; P = 1 (conv) or positions (flattened)."""
    arch = prepared.architecture
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


def _coefficients(layer: nn.Module, columns: Sequence[int], factor: int) -> Tensor:
    """Incoming weights on the chosen input channels as ``(d, P, c [+1 bias])`` float64."""
    weight = tensor_attribute(layer, "weight").detach().to(torch.float64)
    out = weight.shape[0]
    if isinstance(layer, nn.Linear):  # (d, C·f) → (d, f, c)
        coefficients = weight.reshape(out, -1, factor)[:, list(columns), :].permute(0, 2, 1)
    else:  # (d, C, *kernel) → (d, k, c)
        coefficients = weight[:, list(columns)].flatten(2).permute(0, 2, 1)
    if layer.bias is None:
        return coefficients
    positions = coefficients.shape[1]
    bias = (
        tensor_attribute(layer, "bias")
        .detach()
        .to(torch.float64)[:, None, None]
        .expand(out, positions, 1)
        / positions
    )
    return torch.cat([coefficients, bias], dim=2)


def _restrict(hessian: Tensor, columns: Sequence[int], bias: bool) -> Tensor:
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


def _damped(matrix: Tensor, damping: float) -> Tensor:
    diagonal = matrix.diagonal(dim1=1, dim2=2)
    ridge = damping * diagonal.mean(dim=1).clamp_min(1e-12)
    return matrix + ridge[:, None, None] * torch.eye(matrix.shape[-1], dtype=matrix.dtype)


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


def _zip(
    prepared: Prepared,
    hessians: Mapping[str, Mapping[str, Tensor]],
    shares: Mapping[int, float],
    damping: float,
) -> MergedNetwork:
    arch, tasks = prepared.architecture, prepared.tasks
    everyone = frozenset(tasks)
    shared: dict[int, list[Neuron]] = {
        0: [tuple((t, c) for t in tasks) for c in range(arch.spaces[0].size)]
    }
    assignment: dict[int, dict[GroupKey, list[Neuron]]] = {}
    overrides: dict[tuple[str, GroupKey], tuple[Tensor, Tensor | None]] = {}
    for step in arch.steps:
        space = arch.spaces[step.space]
        source = arch.space_of(step.inputs[0]).index
        if step.kind != "layer" or space.role != "hidden" or not shared.get(source):
            continue
        layers = prepared.layer(step)
        has_bias = next(iter(layers.values())).bias is not None
        factor = arch.factor(step.inputs[0])
        inputs = [dict(n) for n in shared[source]]
        coefficients = {t: _coefficients(layers[t], [m[t] for m in inputs], factor) for t in tasks}
        metrics = {
            t: _restrict(hessians[t][step.inputs[0]], [m[t] for m in inputs], has_bias)
            for t in tasks
        }
        if space.index not in shared:
            count = round(shares[space.index] * space.size)
            shared[space.index] = _pair(coefficients, metrics, tasks, count, damping)
            groups = exclusive_groups(space.size, tasks)
            zipped = {(t, i) for n in shared[space.index] for t, i in n}
            assignment[space.index] = {
                everyone: shared[space.index],
                **{k: [n for n in v if n[0] not in zipped] for k, v in groups.items()},
            }
        if shared[space.index]:
            overrides[(step.node, everyone)] = _shared_weights(
                coefficients, metrics, shared[space.index], layers[tasks[0]], has_bias, damping
            )
    return build_network(prepared, assignment, overrides)


def _pair(
    coefficients: Mapping[str, Tensor],
    metrics: Mapping[str, Tensor],
    tasks: Sequence[str],
    count: int,
    damping: float,
) -> list[Neuron]:
    """Zip the tasks' neurons one network at a time: the zipped neurons' members."""
    members: list[dict[str, int]] = [{tasks[0]: i} for i in range(coefficients[tasks[0]].shape[0])]
    weights, metric = coefficients[tasks[0]], metrics[tasks[0]]
    for task in tasks[1:]:
        costs = zip_costs(weights, coefficients[task], metric, metrics[task], damping)
        pairs = _greedy_pairs(costs, min(count, len(members)))
        rows = torch.tensor([i for i, _ in pairs], dtype=torch.long)
        cols = torch.tensor([j for _, j in pairs], dtype=torch.long)
        weights = _zipped(weights[rows], coefficients[task][cols], metric, metrics[task], damping)
        metric = metric + metrics[task]
        members = [{**members[i], task: j} for i, j in pairs]
    return [tuple((t, m[t]) for t in tasks) for m in members]


def _shared_weights(
    coefficients: Mapping[str, Tensor],
    metrics: Mapping[str, Tensor],
    neurons: Sequence[Neuron],
    reference: nn.Module,
    has_bias: bool,
    damping: float,
) -> tuple[Tensor, Tensor | None]:
    """Weight and bias of the shared group (zipped neurons, in order) in the layer's layout."""
    tasks = [t for t, _ in neurons[0]]
    members = [dict(n) for n in neurons]
    weights = coefficients[tasks[0]][[m[tasks[0]] for m in members]]
    metric = metrics[tasks[0]]
    for task in tasks[1:]:
        weights = _zipped(
            weights, coefficients[task][[m[task] for m in members]], metric, metrics[task], damping
        )
        metric = metric + metrics[task]
    bias = weights[:, :, -1].sum(dim=1) if has_bias else None
    body = weights[:, :, :-1] if has_bias else weights  # (k, P, c)
    template = tensor_attribute(reference, "weight")
    if isinstance(reference, nn.Linear):  # (k, f, c) → (k, c·f)
        layout = body.permute(0, 2, 1).reshape(len(neurons), -1)
    else:  # (k, kernel, c) → (k, c, *kernel)
        layout = body.permute(0, 2, 1).reshape(len(neurons), body.shape[2], *template.shape[2:])
    return layout.to(template.dtype), None if bias is None else bias.to(template.dtype)
