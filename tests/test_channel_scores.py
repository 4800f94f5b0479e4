"""The opt-in channel criterion (``criterion="activation"``): per-task ``Σ_b |Σ a·∂L_t/∂a|``.

The reference is the loop a user writes by hand: forward hooks keep every
conv/linear output (handing the network a copy, so later in-place ops cannot touch
it), one ``torch.autograd.grad`` per task with the graph retained, parameters
requiring grad as usual, and per output channel the absolute sum over batch and
space of ``a·∂L_t/∂a``, summed over batches.
"""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from hypothesis import given, settings
from torch import nn

import adapters.torch_pruning as atp
from adapters.nni import CUTPruner as NNICUTPruner
from cut_plugin import CHANNEL_CRITERIA, CUTConfig, cut_masks, score_channels, score_tasks
from tests.random_models import SPECS, RandomNet, Spec, batches_for, cross_entropy_losses
from tests.toy_models import (
    ResidualNet,
    example_input,
    init_nontrivial,
    losses_for,
    make_batches,
    same_state,
    state_snapshot,
)

LAYERS = (nn.Conv2d, nn.Linear)


def reference_channel_scores(model, batches, losses):
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LAYERS)}
    scores: dict[str, dict[str, torch.Tensor]] = {t: {} for t in losses}
    for inputs, targets in batches:
        kept: list[tuple[str, torch.Tensor]] = []

        def hook(module, args, output, name=None, kept=kept):
            kept.append((name, output))
            return output.clone()

        handles = [
            m.register_forward_hook(lambda mod, a, o, name=n, hook=hook: hook(mod, a, o, name))
            for n, m in layers.items()
        ]
        try:
            outputs = model(inputs)
        finally:
            for handle in handles:
                handle.remove()
        for i, task in enumerate(losses):
            loss = losses[task](outputs[task], targets[task])
            grads = torch.autograd.grad(
                loss, [o for _, o in kept], retain_graph=i < len(losses) - 1, allow_unused=True
            )
            batch: dict[str, torch.Tensor] = {}
            for (name, a), g in zip(kept, grads, strict=True):
                if g is None:
                    continue
                channel = a.dim() - 1 if isinstance(layers[name], nn.Linear) else 1
                dims = [d for d in range(a.dim()) if d != channel]
                term = (a * g).sum(dims).detach()
                batch[name] = batch[name] + term if name in batch else term
            for name, term in batch.items():
                scores[task][name] = scores[task].get(name, 0) + term.abs()
    return scores


def assert_scores_close(actual, expected):
    assert actual.keys() == expected.keys()
    for task in expected:
        assert actual[task].keys() == expected[task].keys(), task
        scale = max(float(v.abs().max()) for v in expected[task].values())
        for name, value in expected[task].items():
            # BatchNorm computed as its affine map: float rounding only.
            torch.testing.assert_close(
                actual[task][name], value, rtol=1e-4, atol=1e-5 * scale + 1e-12
            )


@settings(max_examples=4, deadline=None)
@given(SPECS)
def test_channel_scores_equal_the_plain_loop_on_random_architectures(spec):
    torch.manual_seed(spec.seed)
    model = RandomNet(spec)
    batches = batches_for(model, count=2)
    losses = cross_entropy_losses(model)
    scores = score_channels(model, batches, losses, progress=False)
    assert_scores_close(scores, reference_channel_scores(model, batches, losses))
    assert any(bool(v.sum() > 0) for s in scores.values() for v in s.values())


def test_channel_scores_on_a_residual_net_with_linear_heads():
    model = init_nontrivial(ResidualNet())
    batches = make_batches(model, count=2)
    losses = losses_for(model)
    scores = score_channels(model, batches, losses, progress=False)
    assert_scores_close(scores, reference_channel_scores(model, batches, losses))
    # Task a's head is a Linear layer: scored per output feature, only for task a.
    assert scores["a"]["heads.a.2"].shape == (3,)
    assert "heads.a.2" not in scores["b"] and "heads.seg.0" not in scores["a"]


def test_two_batches_accumulate_to_the_sum():
    model = init_nontrivial(ResidualNet())
    first, second = make_batches(model, count=2)
    losses = losses_for(model)
    both = score_channels(model, [first, second], losses, progress=False)
    one = score_channels(model, [first], losses, progress=False)
    two = score_channels(model, [second], losses, progress=False)
    for task, per_layer in both.items():
        for name, value in per_layer.items():
            torch.testing.assert_close(value, one[task][name] + two[task][name])
    importance = atp.CUTImportance(losses, criterion="activation", progress=False)
    importance.accumulate(model, *first)
    importance.accumulate(model, *second)
    for task, per_layer in both.items():
        for name, value in per_layer.items():
            torch.testing.assert_close(importance.scores[task][name], value)


def test_the_model_is_unchanged():
    model = init_nontrivial(ResidualNet())
    batch = make_batches(model, count=1)  # puts the model in eval mode
    model.trunk[0].weight.requires_grad_(False)
    model.heads["b"].train()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    snapshot = state_snapshot(model)
    score_channels(model, batch, losses_for(model), progress=False)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert same_state(model, snapshot)
    assert all(p.grad is None for p in model.parameters())
    assert not any("forward" in vars(m) for m in model.modules())  # BatchNorm's is back


def test_no_parameter_requires_grad_during_the_pass():
    model = init_nontrivial(ResidualNet())
    batches = make_batches(model, count=1)
    seen: list[bool] = []
    model.trunk[0].register_forward_hook(
        lambda m, a, o: seen.append(any(p.requires_grad for p in model.parameters()))
    )
    score_channels(model, batches, losses_for(model), progress=False)
    assert seen == [False]


def test_group_importance_sums_the_layers_whose_outputs_the_group_prunes():
    model = init_nontrivial(ResidualNet())
    batches = make_batches(model, count=2)
    importance = atp.CUTImportance(losses_for(model), criterion="activation", rule="mean")
    importance.estimate(model, batches)
    graph = tp.DependencyGraph().build_dependency(model, example_input(model))
    first = model.trunk[0]  # the stem: its channels are shared with the first residual block
    group = graph.get_pruning_group(first, tp.prune_conv_out_channels, list(range(16)))
    names = {id(m): n for n, m in model.named_modules()}
    producers = [
        names[id(dep.target.module)]
        for dep, _ in group
        if dep.handler in (tp.prune_conv_out_channels, tp.prune_linear_out_channels)
    ]
    assert {"trunk.0", "trunk.3.conv2"} <= set(producers)  # a residual group
    for task in ("a", "b"):
        expected = sum(importance.scores[task][n] for n in producers)
        torch.testing.assert_close(importance._channel_scores(task, group), expected)


def test_cut_prune_with_the_channel_criterion_prunes_and_runs():
    model = init_nontrivial(ResidualNet())
    x = example_input(model)
    pruned = atp.cut_prune(
        model, x, tasks=["a", "seg"], losses=losses_for(model), data=make_batches(model),
        pruning_ratio=0.5, config=CUTConfig(criterion="activation"), progress=False,
    )  # fmt: skip
    before = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("heads.b"))
    assert sum(p.numel() for p in pruned.parameters()) < before
    out = pruned(x)
    assert set(out) == {"a", "seg"}
    reference = model(x)
    assert all(out[t].shape == reference[t].shape for t in out)


def test_iterative_steps_re_estimate_stale_channel_scores():
    model = init_nontrivial(ResidualNet())
    x = example_input(model)
    pruner = atp.CUTPruner(
        model, x, tasks=["a", "b"], losses=losses_for(model), data=make_batches(model),
        pruning_ratio=0.5, iterative_steps=2, criterion="activation", progress=False,
    )  # fmt: skip
    pruner.step()
    assert pruner.importance.is_stale(pruner.model)  # widths changed: scored again next step
    calls: list[int] = []
    estimate = pruner.importance.estimate
    pruner.importance.estimate = lambda *a, **k: (calls.append(1), estimate(*a, **k))[1]
    pruner.step()
    assert calls == [1]
    assert set(pruner.model(x)) == {"a", "b"}


def test_cut_prune_to_a_mac_budget_with_the_channel_criterion():
    model = init_nontrivial(ResidualNet())
    x = example_input(model)
    pruned = atp.cut_prune(
        model, x, tasks=["a", "b"], losses=losses_for(model), data=make_batches(model),
        target_macs=0.5, criterion="activation", progress=False,
    )  # fmt: skip
    dense = atp.count_macs(model, x)[0]
    assert atp.count_macs(pruned, x)[0] < dense


def test_element_routes_reject_the_channel_criterion():
    model = init_nontrivial(ResidualNet())
    batches = make_batches(model, count=1)
    assert CHANNEL_CRITERIA == ("activation",)
    with pytest.raises(ValueError, match="granularity='channel'"):
        atp.cut_prune(
            model, example_input(model), tasks=["a", "b"], losses=losses_for(model),
            data=batches, pruning_ratio=0.5, granularity="weight", criterion="activation",
        )  # fmt: skip
    with pytest.raises(ValueError, match="element scores"):
        score_tasks(model, batches, losses_for(model), criterion="activation", progress=False)
    with pytest.raises(ValueError, match="criterion must be one of"):
        CUTConfig(criterion="activations")
    channel_scores = score_channels(model, batches, losses_for(model), progress=False)
    with pytest.raises(ValueError, match="channel scores keyed by module name"):
        cut_masks(model, channel_scores, pruning_ratio=0.5)


def test_element_scores_do_not_fit_a_channel_importance():
    model = init_nontrivial(ResidualNet())
    batches = make_batches(model, count=1)
    elements = score_tasks(model, batches, losses_for(model), progress=False)
    importance = atp.CUTImportance(losses_for(model), criterion="activation")
    with pytest.raises(ValueError, match="output channels"):
        importance.use_scores(model, elements, example_input(model))


@pytest.mark.parametrize(
    "spec",
    [
        # h.clamp_(max=6) on a (second: the first is a leaf) conv output without BatchNorm:
        # scored before the in-place op.
        Spec(
            blocks=(("conv", 6, True), ("conv", 6, False)),
            heads=(("linear", 2, 3),),
            seed=1,
            act="clamp_",
        ),
        # h.view(-1, C, H·W).relu_(): a conv output activated in place through a view.
        Spec(
            blocks=(("view", 6, False), ("conv", 5, True)),
            heads=(("linear", 2, 3), ("dense", 1, 2)),
            seed=2,
        ),
    ],
    ids=["in-place clamp", "view"],
)
def test_in_place_ops_and_views_keep_the_reference_scores(spec):
    model = RandomNet(spec)
    with torch.no_grad():
        model.trunk[1].conv.weight.mul_(20)  # outputs above 6: the clamp changes them
    batches = batches_for(model, count=2)
    losses = cross_entropy_losses(model)
    scores = score_channels(model, batches, losses, progress=False)
    assert_scores_close(scores, reference_channel_scores(model, batches, losses))


class FlatViewNet(nn.Module):
    """``h.view(N, -1)`` of a feature map, a BatchNorm1d between two Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)
        self.bn = nn.BatchNorm1d(5)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 1.5)
            self.bn.weight.uniform_(0.5, 1.5)
        self.out = nn.Linear(5, 5)
        self.eval()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.conv(x).relu()
        return {"t": self.out(self.bn(self.fc(h.view(h.shape[0], -1))).relu())}


def test_a_flattening_view_and_a_batchnorm1d():
    torch.manual_seed(0)
    model = FlatViewNet()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 8, 8, generator=g), {"t": torch.randint(0, 5, (4,), generator=g)})
               for _ in range(2)]  # fmt: skip
    losses = {"t": nn.functional.cross_entropy}
    scores = score_channels(model, batches, losses, progress=False)
    assert_scores_close(scores, reference_channel_scores(model, batches, losses))


def test_nni_pruner_rejects_the_channel_criterion():
    model = init_nontrivial(ResidualNet())
    config_list = [{"op_types": ["Conv2d"], "op_names_re": [r"trunk\..*"], "sparse_ratio": 0.5}]
    pruner = NNICUTPruner(
        model, config_list, losses=losses_for(model), data=make_batches(model, count=1),
        progress=False, criterion="activation",
    )  # fmt: skip
    with pytest.raises(ValueError, match="element scores"):
        pruner.compress()
