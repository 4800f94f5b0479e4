"""Per-task channel scores from activation gradients: an opt-in, approximate criterion.

``criterion="activation"`` scores every *output channel* of every conv/linear
layer, per task, by the first-order Taylor estimate of the change in the task's
loss when the channel is removed (Molchanov et al., "Pruning Convolutional Neural
Networks for Resource Efficient Inference", ICLR 2017): with ``a`` the layer's
output and ``c`` a channel,

    s_t[c] = Σ_b | Σ_{n, spatial} a[n, c, …] · ∂L_t^b/∂a[n, c, …] |

(the absolute value per batch ``b``, then summed over batches). It needs the
gradients with respect to the layer outputs only, never a weight gradient, so its
backward passes skip every weight-gradient kernel: the fast route for the
structured (channel) path. It is not CUT's element criterion (``taylor``,
``Σ|w·∂L_t/∂w|`` per weight), which stays the default and is unchanged; the routes
that need element scores (``score_tasks``, unstructured ``cut_prune``, NNI's
pruner, which scores through ``score_tasks``) raise on it, naming the fix.

Implementation notes:
- One forward per batch with forward hooks on the conv/linear layers recording
  their outputs, then one ``torch.autograd.grad`` per selected task with respect to
  those outputs (the graph retained but for the last task). Parameters do not
  require grad during the pass (no weight gradient is computed or stored); each
  parameter's flag, each module's mode and ``.grad`` are as they were afterwards.
  Stacking the task losses into one ``is_grads_batched=True`` call was measured
  slower on CPU (benchmark ResNet, one thread: 0.77 of the plain loop against 0.71
  for the separate calls) and is not used; so were channels-last inputs (no
  consistent gain).
- Eval mode, as ``score_tasks``: BatchNorm uses its running statistics, computed
  during the pass as its per-channel affine map ``x·s + t`` (stock BatchNorm{1,2,3}d
  with running statistics only; same values up to rounding, a cheaper backward; the
  module's own ``forward`` is back afterwards).
- A layer whose output is modified in place later in the forward (``h.clamp_()``,
  ``h.relu_()`` right after a conv without BatchNorm) would otherwise be scored on
  the modified tensor: such a layer is detected (its output's version counter
  moved), that batch's forward is re-run and from then on the layer hands a copy to
  the rest of the network, so ``a`` and ``∂L/∂a`` are those of its own output.
- A layer called several times per forward sums ``a·∂L/∂a`` over the calls before
  the absolute value (removing the channel removes it from every call).
- A layer a task's loss does not reach has no entry in that task's scores.
- Data-parallel like ``score_tasks``: with an initialised process group each rank
  scores its shard and the scores are all-reduced (summed).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from cut_plugin.checks import unwrap_model
from cut_plugin.masks import PRUNABLE_TYPES
from cut_plugin.scoring import all_reduce_scores
from cut_plugin.vocabulary import (
    Loss,
    check_losses,
    check_targets,
    check_tasks,
    iterate_batches,
    model_device_dtype,
    run_model,
    scalar_loss,
)

__all__ = ["CHANNEL_TYPES", "ChannelScores", "channel_layers", "output_width", "score_channels"]

CHANNEL_TYPES: tuple[type[nn.Module], ...] = PRUNABLE_TYPES
"""The layers whose output channels are scored: the ones ``cut_masks`` prunes."""
ChannelScores = dict[str, dict[str, Tensor]]


def channel_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{module_name: layer}`` for every conv/linear layer (the layers channel scores cover)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, CHANNEL_TYPES)}


def output_width(layer: nn.Module) -> int:
    """The number of output channels (conv) or features (linear) of ``layer``."""
    if isinstance(layer, nn.Linear):
        return int(layer.out_features)
    return int(layer.out_channels)  # type: ignore[arg-type]


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@contextmanager
def _scoring_pass(model: nn.Module) -> Iterator[None]:
    """Within the block: eval mode, no parameter requiring grad, BatchNorm as its affine map.

    In eval mode a BatchNorm with running statistics is ``y = x·s + t`` per channel;
    computing it as one ``addcmul`` (an instance ``forward``, deleted afterwards)
    gives the same values up to rounding and a cheaper backward than the native
    kernel's (measured: about 0.67 → 0.59 of the plain loop on the benchmark ResNet).
    Afterwards every mode, flag and ``forward`` is as it was.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    patched: list[nn.Module] = []
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        for m in model.modules():
            if isinstance(m, BATCH_NORMS) and "forward" not in vars(m) and _has_statistics(m):
                m.forward = _affine(m)  # type: ignore[method-assign]
                patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def _has_statistics(bn: nn.Module) -> bool:
    """Running statistics, and the stock ``forward`` (a subclass's own is left alone)."""
    stock = type(bn).forward is nn.BatchNorm2d.forward
    return stock and isinstance(bn.running_mean, Tensor) and isinstance(bn.running_var, Tensor)


def _affine(bn: nn.Module) -> Any:
    """Eval-mode ``bn`` as ``x·s + t`` per channel (the channel dimension is 1)."""
    mean, var, weight, bias = bn.running_mean, bn.running_var, bn.weight, bn.bias
    assert isinstance(mean, Tensor) and isinstance(var, Tensor)  # _has_statistics
    with torch.no_grad():
        scale = torch.rsqrt(var + float(bn.eps))  # type: ignore[arg-type]
        if isinstance(weight, Tensor):
            scale = scale * weight
        shift = -mean * scale
        if isinstance(bias, Tensor):
            shift = shift + bias

    def forward(x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(shift.to(x.dtype).view(shape), x, scale.to(x.dtype).view(shape))

    return forward


class _OutputRecorder:
    """Forward hooks keeping each conv/linear output (and its version) of one forward."""

    def __init__(self, layers: Mapping[str, nn.Module]) -> None:
        self.records: list[tuple[str, Tensor, int]] = []
        self.copied: set[str] = set()  # layers whose output the network modifies in place
        self.linear = {name for name, m in layers.items() if isinstance(m, nn.Linear)}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in layers.items()]

    def _hook(self, name: str) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> Tensor | None:
            if not isinstance(output, Tensor) or not output.is_floating_point():
                return None
            if not output.requires_grad:
                # Nothing upstream requires grad (parameters are frozen): the output
                # becomes a leaf, and the network gets a copy it may modify in place.
                leaf = output.detach().requires_grad_(True)
                self.records.append((name, leaf, leaf._version))
                return leaf.clone()
            self.records.append((name, output, output._version))
            return output.clone() if name in self.copied else None

        return hook

    def modified(self) -> set[str]:
        """Layers whose recorded output was changed in place after the layer returned it."""
        return {name for name, tensor, version in self.records if tensor._version != version}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _channel_terms(
    records: Sequence[tuple[str, Tensor, int]], grads: Sequence[Tensor | None], linear: set[str]
) -> dict[str, Tensor]:
    """``{layer: |Σ a·∂L/∂a|}`` per output channel for one batch (calls of a layer summed first)."""
    terms: dict[str, Tensor] = {}
    for (name, output, _), grad in zip(records, grads, strict=True):
        if grad is None:
            continue
        channel = output.dim() - 1 if name in linear else min(1, output.dim() - 1)
        dims = [d for d in range(output.dim()) if d != channel]
        term = (output.detach() * grad).sum(dim=dims) if dims else output.detach() * grad
        terms[name] = terms[name] + term if name in terms else term
    return {name: term.abs_() for name, term in terms.items()}


def score_channels(
    model: nn.Module,
    batches: Iterable[Any],
    losses: Mapping[str, Loss],
    *,
    tasks: Sequence[str] | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    task_names: Sequence[str] | None = None,
) -> ChannelScores:
    """Return per-task channel scores: ``{task: {module_name: Tensor(out_channels,)}}``.

    ``s_t[c] = Σ_b |Σ_{n, spatial} a·∂L_t^b/∂a|`` over the output channels of every
    conv/linear layer (module docstring). Arguments as :func:`cut_plugin.score_tasks`;
    the model is not changed (weights, ``.grad``, ``requires_grad``, train/eval mode).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    model = unwrap_model(model, operation="score_channels")
    if tasks is not None:
        tasks = check_tasks(tasks)
        check_losses(losses, tasks)
    layers = channel_layers(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no conv/linear layer to score channels of; "
            "use score_tasks with criterion='taylor' for element scores"
        )
    device, _ = model_device_dtype(model)
    selected: list[str] = []
    scores: ChannelScores = {}
    recorder = _OutputRecorder(layers)
    try:
        with _scoring_pass(model), torch.enable_grad():
            bar = tqdm(
                iterate_batches(batches, max_batches=max_batches),
                total=max_batches,
                desc="scoring (activation)",
                disable=not progress,
                leave=False,
            )
            for index, inputs, raw_targets in bar:
                outputs = _forward(model, recorder, inputs, task_names)
                if not selected:
                    selected = check_tasks(
                        tasks if tasks is not None else list(outputs), list(outputs)
                    )
                    task_losses = check_losses(losses, selected)
                    scores = {t: {} for t in selected}
                targets = check_targets(raw_targets, selected, index)
                records, recorder.records = recorder.records, []
                tensors = [tensor for _, tensor, _ in records]
                for position, task in enumerate(selected):
                    target = targets[task]
                    if isinstance(target, Tensor):
                        target = target.to(device)
                    loss = scalar_loss(
                        task_losses[task], outputs[task], target, task=task, index=index
                    )
                    grads = torch.autograd.grad(
                        loss, tensors, retain_graph=position < len(selected) - 1, allow_unused=True
                    )
                    with torch.no_grad():
                        acc = scores[task]
                        for name, term in _channel_terms(records, grads, recorder.linear).items():
                            acc[name] = acc[name].add_(term) if name in acc else term
                del records, tensors, outputs
    finally:
        recorder.remove()
    all_reduce_scores(scores)
    return scores


def _forward(
    model: nn.Module, recorder: _OutputRecorder, inputs: Any, task_names: Sequence[str] | None
) -> dict[str, Tensor]:
    """One recorded forward; re-run once with copies when a layer's output was modified in place."""
    recorder.records = []
    outputs = run_model(model, inputs, task_names)
    modified = recorder.modified()
    if modified:
        recorder.copied |= modified
        recorder.records = []
        outputs = run_model(model, inputs, task_names)
    return outputs
