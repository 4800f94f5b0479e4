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

Two wirings (``wiring``):
- ``"pam"`` (default): zipped neurons form the shared group, which reads only
  the shared group of the layer below (PAM's wiring: a task subset runs without
  the other tasks' neurons). With ``share < 1`` a zipped neuron loses its
  weights from unzipped inputs; a layer after one with nothing zipped is not
  zipped. Hessians are measured once, on the original networks.
- ``"released"`` (the authors' code, ``pam_plugin.mtz_wiring``): a zipped
  neuron of layer ``l+1`` also reads task ``t``'s unzipped neurons of layer
  ``l``, through ``t``'s own weights (``W_inter``), so behind a partly zipped
  layer its value differs per task: it is held once per task (its weights on
  zipped inputs and its bias equal), in the task's group. Hessians are measured
  layer by layer on the network zipped so far; zipping a layer after one with
  nothing zipped raises, as the authors' code does.

Per-layer table: ``share={module name: fraction}`` (the authors'
``tomerge_nb_dict`` is ``fraction · width``) or one fraction per mergeable
layer in order. ``finetune(network, layer)`` runs after each zipped layer (the
authors: 50–5000 iterations, :class:`pam_plugin.MTZFinetuning`), on the
network zipped so far; the zipped weights stay tied while it trains (with
``finetune`` the Hessians are measured layer by layer, in either wiring).
``fc_cost="euclidean"``: linear layers are paired by the Euclidean distance of
their ``[w; b]``, the layer reading a flattened map takes the plain average, as
the authors' VGG script does (``pam_plugin.zipping``).

Implementation notes (deviations from the authors' TensorFlow code):
- ``(H_A⁻¹ + H_B⁻¹)⁻¹`` is computed as ``H_A (H_A + H_B)⁻¹ H_B`` and
  ``w* = (w_i + w_j)/2 + (H_A + H_B)⁻¹ (H_A − H_B)(w_i − w_j)/2`` (equal, and
  exact when ``w_i = w_j``), with ``damping · mean diag`` added to ``H_A + H_B``.
- Conv layers: ``H`` is over the input channel vector at each position (one
  ``(C+1)²`` matrix shared by the kernel offsets); a linear layer after a
  Flatten has one ``H`` per spatial position. The bias is the weight of the
  constant 1, spread over the offsets and summed back.
- BatchNorm is folded into the conv/linear before it (eval statistics) and
  becomes an identity (running mean 0, var 1 − eps) in the merged network; it
  is not trained by ``finetune``.
- A ResNet stage (one channel space written by several layers) is paired by
  its first layer; the other layers zip the same pairs (``wiring="pam"``
  without ``finetune`` only).
- ``wiring="released"``: a per-task copy of a zipped neuron counts its
  parameters once per task (same MACs as the authors' network); retraining the
  result afterwards trains the copies apart.
- Conv bias: spread over the kernel offsets and summed back (the authors tile
  it and take the mean); their FC Hessians use ``pinv`` (here the damped
  solve). ``fc_cost="euclidean"`` follows ``Final_merge_Exp1.py``
  (``Final_merge_Exp3.py`` copies B's FC rows instead); with more than two
  networks its average is weighted by the networks already zipped.
- ``MTZFinetuning`` trains on the summed task losses (the authors weight the
  two tasks' gradients by ``train_ratio_imageNet2Face``).
- Without ``finetune``, MTZ's light retraining is left to
  :func:`pam_plugin.retrain` (or to pruning).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from torch import Tensor, nn

from cut_plugin.vocabulary import check_choice, check_int, check_number
from pam_plugin.architecture import Architecture
from pam_plugin.construction import Prepared, build_network, space_of_layers
from pam_plugin.grouping import GroupKey, Neuron, exclusive_groups
from pam_plugin.merged import MergedNetwork
from pam_plugin.mtz_wiring import WIRINGS, Finetune, Wiring, zip_layerwise
from pam_plugin.zipping import (
    FC_COSTS,
    FCCost,
    coefficients,
    fold_batchnorms,
    layer_hessians,
    layer_rule,
    merged_rows,
    pair_neurons,
    restrict,
    to_layout,
    zip_costs,
)

__all__ = ["WIRINGS", "Finetune", "MTZMerger", "MTZResult", "Wiring", "zip_costs"]


@dataclass(frozen=True)
class MTZResult:
    """A zipped network and, per mergeable layer (module name), its zipped neurons in order."""

    network: MergedNetwork
    zipped: dict[str, list[Neuron]] = field(default_factory=dict)
    """``{layer: [((task, index), ...) per zipped neuron]}``; ``[]`` for a layer not zipped."""


@dataclass(frozen=True, kw_only=True)
class MTZMerger:
    """Multi-task zipping: ``MTZMerger(share=...).merge(networks, inputs) -> MergedNetwork``.

    Args:
        share: fraction of each hidden layer's neurons zipped: a float for
            every layer, ``{layer module name: fraction}`` (unlisted layers: 0;
            a ResNet stage is named by any one of its layers), or a sequence of
            one fraction per mergeable layer in execution order.
        batch_size: forward batch size when measuring the Hessians.
        damping: relative ridge added to ``H_A + H_B`` before solving.
        wiring: ``"pam"`` (zipped neurons read only zipped inputs) or
            ``"released"`` (they also read each task's unzipped inputs, ``W_inter``).
        fc_cost: ``"hessian"`` or ``"euclidean"`` (the released rule for linear layers).
        finetune: ``finetune(network, layer)`` after each zipped layer (e.g.
            :class:`pam_plugin.MTZFinetuning`); ``None``: no fine-tuning.
    """

    share: float | Mapping[str, float] | Sequence[float] = 1.0
    batch_size: int = 128
    damping: float = 1e-6
    wiring: Wiring = "pam"
    fc_cost: FCCost = "hessian"
    finetune: Finetune | None = None

    def __post_init__(self) -> None:
        if isinstance(self.share, Mapping):
            for name, value in self.share.items():
                if not isinstance(name, str):
                    raise TypeError(
                        f"share keys must be layer module names (str), got {name!r}; "
                        "e.g. share={'features.0': 0.5}"
                    )
                check_number(f"share[{name!r}]", value, low=0.0, high=1.0)
            object.__setattr__(self, "share", dict(self.share))
        elif isinstance(self.share, Sequence) and not isinstance(self.share, str):
            for index, value in enumerate(self.share):
                check_number(f"share[{index}]", value, low=0.0, high=1.0)
            object.__setattr__(self, "share", tuple(self.share))
        elif isinstance(self.share, str):
            raise TypeError(
                f"share must be a fraction, a mapping {{layer: fraction}} or a sequence of "
                f"fractions, got the string {self.share!r}"
            )
        else:
            check_number("share", self.share, low=0.0, high=1.0)
        check_int("batch_size", self.batch_size)
        check_number("damping", self.damping, low=0.0)
        check_choice("wiring", self.wiring, WIRINGS)
        check_choice("fc_cost", self.fc_cost, FC_COSTS)
        if self.finetune is not None and not callable(self.finetune):
            raise TypeError(
                "finetune must be None or a callable finetune(network, layer), e.g. "
                f"pam_plugin.MTZFinetuning(batches, losses, steps=100); got {self.finetune!r}"
            )

    def merge(self, networks: Mapping[str, nn.Module], inputs: Tensor) -> MergedNetwork:
        """Zip ``networks`` (``{task: network}``, left untouched) measured on ``inputs`` ``(B, ...)``."""
        return self.zip(networks, inputs).network

    def zip(self, networks: Mapping[str, nn.Module], inputs: Tensor) -> MTZResult:
        """Like :meth:`merge`, also returning which neurons each layer zipped."""
        prepared = Prepared(networks, inputs, min_samples=1)
        shares = self._shares(prepared.architecture)
        names = {s.index: s.name for s in prepared.architecture.hidden_spaces}
        if len(prepared.tasks) == 1 or not any(shares.values()):
            return MTZResult(build_network(prepared, {}), {n: [] for n in names.values()})
        if self.wiring == "released" or self.finetune is not None:
            network, zipped = zip_layerwise(
                prepared, shares, wiring=self.wiring, fc_cost=self.fc_cost,
                damping=self.damping, batch_size=self.batch_size, finetune=self.finetune,
            )  # fmt: skip
        else:
            fold_batchnorms(prepared)
            hessians = {t: layer_hessians(prepared, t, self.batch_size) for t in prepared.tasks}
            network, zipped = _zip(prepared, hessians, shares, self.damping, self.fc_cost)
        return MTZResult(network, {n: list(zipped.get(i, [])) for i, n in names.items()})

    def _shares(self, arch: Architecture) -> dict[int, float]:
        hidden = arch.hidden_spaces
        owner = space_of_layers(arch)
        if isinstance(self.share, tuple):
            if len(self.share) != len(hidden):
                raise ValueError(
                    f"share has {len(self.share)} entries but the networks have {len(hidden)} "
                    f"mergeable layers {[s.name for s in hidden]}; give one fraction per layer, "
                    "in order, or a mapping {layer: fraction}"
                )
            return {s.index: float(v) for s, v in zip(hidden, self.share, strict=True)}
        if not isinstance(self.share, Mapping):
            return {s.index: float(cast(float, self.share)) for s in hidden}
        unknown = [name for name in self.share if name not in owner]
        if unknown:
            outputs = [arch.step(n).target for n in arch.output_space.producers]
            heads = [name for name in unknown if name in outputs]
            hint = f"; {heads} write the task outputs, never zipped" if heads else ""
            raise ValueError(
                f"share names unknown layer(s) {unknown}; the mergeable layers are "
                f"{list(owner)}{hint}"
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


def _zip(
    prepared: Prepared,
    hessians: Mapping[str, Mapping[str, Tensor]],
    shares: Mapping[int, float],
    damping: float,
    fc_cost: FCCost,
) -> tuple[MergedNetwork, dict[int, list[Neuron]]]:
    """PAM's wiring, in one pass on the original networks' Hessians."""
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
        reference = layers[tasks[0]]
        has_bias = reference.bias is not None
        factor = arch.factor(step.inputs[0])
        rule = layer_rule(reference, factor, fc_cost)
        inputs = [dict(n) for n in shared[source]]
        rows = {t: coefficients(layers[t], [m[t] for m in inputs], factor) for t in tasks}
        metrics = {
            t: restrict(hessians[t][step.inputs[0]], [m[t] for m in inputs], has_bias)
            for t in tasks
        }
        if space.index not in shared:
            count = round(shares[space.index] * space.size)
            shared[space.index] = pair_neurons(
                rows, metrics, tasks, count, damping, rule, has_bias
            )[0]
            groups = exclusive_groups(space.size, tasks)
            zipped = {(t, i) for n in shared[space.index] for t, i in n}
            assignment[space.index] = {
                everyone: shared[space.index],
                **{k: [n for n in v if n[0] not in zipped] for k, v in groups.items()},
            }
        if shared[space.index]:
            weights = merged_rows(rows, metrics, shared[space.index], damping, rule)
            overrides[(step.node, everyone)] = to_layout(weights, reference, has_bias)
    shared.pop(0)
    return build_network(prepared, assignment, overrides), shared
