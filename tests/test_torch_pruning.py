"""Structured CUT through Torch-Pruning: widths kept, MACs fall, masked == physical, save/load."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp

import adapters.torch_pruning as atp
from cut_plugin import apply_masks, mask_sparsity, select_tasks
from tests.toy_models import (
    ConcatNet,
    MLPNet,
    ResidualNet,
    example_input,
    init_nontrivial,
    losses_for,
    make_batches,
    same_state,
    state_snapshot,
)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = init_nontrivial(ResidualNet())
    return model, make_batches(model, 2), losses_for(model)


def macs(model, x):
    return tp.utils.count_ops_and_params(model, (x,))[0]


def test_output_layers_finds_each_heads_last_layer():
    model = ResidualNet()
    layers = atp.output_layers(model, example_input(model))
    assert layers["a"] is model.heads["a"][2]
    assert layers["b"] is model.heads["b"][4]
    assert layers["seg"] is model.heads["seg"][0]  # through the upsampling


def test_widths_kept_macs_fall_outputs_change_caller_untouched(setup):
    model, batches, losses = setup
    snapshot = state_snapshot(model)
    x = example_input(model, 2)
    dense = select_tasks(model, ["a", "seg"])
    reference = dense(x)
    costs = [macs(dense, x)]
    for ratio in (0.2, 0.4, 0.6):
        compact = atp.cut_prune(
            model,
            (x[:1],),
            tasks=["a", "seg"],
            losses=losses,
            data=batches,
            pruning_ratio=ratio,
            progress=False,
        )
        out = compact(x)
        assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in reference.items()}
        assert not torch.allclose(out["a"], reference["a"])
        costs.append(macs(compact, x))
    assert costs == sorted(costs, reverse=True) and len(set(costs)) == len(costs)
    assert same_state(model, snapshot)


def test_pruner_options_pass_through(setup):
    model, batches, losses = setup
    x = example_input(model, 1)
    pruner = atp.CUTPruner(
        model,
        (x,),
        tasks=["a", "b"],
        losses=losses,
        data=batches,
        pruning_ratio=0.5,
        iterative_steps=2,
        global_pruning=True,
        round_to=2,
        progress=False,
    )
    widths = []
    for _ in range(2):
        pruner.step()
        widths.append(dict(pruner.model.named_modules())["trunk.0"].out_channels)
    assert widths[0] > widths[1] and all(w % 2 == 0 for w in widths)
    assert {k: v.shape[1] for k, v in pruner.model(x).items()} == {"a": 3, "b": 2}


def test_rules_give_different_models(setup):
    model, batches, losses = setup
    x = example_input(model, 2)
    outputs = {}
    for rule in ("vote", "any"):
        compact = atp.cut_prune(
            model,
            (x[:1],),
            tasks=["a", "b", "seg"],
            losses=losses,
            data=batches,
            pruning_ratio=0.5,
            rule=rule,
            progress=False,
        )
        outputs[rule] = compact(x)["a"]
    assert not torch.allclose(outputs["vote"], outputs["any"])


def test_importance_accumulates_and_ranks_voted_channels_first(setup):
    model, batches, losses = setup
    selected = select_tasks(model, ["a", "b"])
    imp = atp.CUTImportance(losses, tasks=["a", "b"], progress=False, calibrate=False)
    imp.estimate(selected, batches)
    acc = atp.CUTImportance(losses, tasks=["a", "b"], progress=False)
    for inputs, targets in batches:
        acc.accumulate(selected, inputs, targets)
    for task in imp.scores:
        for name, value in imp.scores[task].items():
            torch.testing.assert_close(acc.scores[task][name], value)
    graph = tp.DependencyGraph().build_dependency(selected, example_input(model, 1))
    layer = dict(selected.named_modules())["trunk.4"]
    group = graph.get_pruning_group(
        layer, tp.prune_conv_out_channels, list(range(layer.out_channels))
    )
    ranking = imp(group)
    per_task = torch.stack([imp._channel_scores(t, group) for t in ("a", "b")])
    kept_by = torch.stack(
        [
            torch.zeros(32, dtype=torch.bool).index_fill(0, s.topk(16).indices, True)
            for s in per_task
        ]
    )
    both = kept_by.all(0)
    assert both.any() and (~both).any()
    assert ranking[both].min() > ranking[~both].max()
    # Calibrated (the default): the fused verdict itself keeps exactly keep_ratio of the group.
    calibrated = atp.CUTImportance(losses, tasks=["a", "b"], progress=False)
    calibrated.scores, calibrated._names = imp.scores, imp._names
    assert int((calibrated(group) >= 2).sum()) == 16 > int(both.sum())


def test_masked_equals_physically_pruned():
    torch.manual_seed(1)
    for model, x in (
        (init_nontrivial(ResidualNet()), None),
        (init_nontrivial(ConcatNet()), None),
        (MLPNet(), None),
    ):
        x = example_input(model, 3)
        names = ["left", "right"] if isinstance(model, ConcatNet) else None
        masks = {}
        for name, param in model.named_parameters():
            if param.dim() > 1 and not name.startswith("heads."):
                masks[name] = torch.rand(param.shape[0], *[1] * (param.dim() - 1)) > 0.4
        compact = atp.prune_by_masks(model, masks, (x[:1],), task_names=names)
        masked = apply_masks(model, atp.align_masks(model, masks, (x[:1],), task_names=names))
        out_c, out_m = compact(x), masked(x)
        if isinstance(out_c, tuple):
            out_c, out_m = dict(enumerate(out_c)), dict(enumerate(out_m))
        for key in out_m:
            torch.testing.assert_close(out_c[key], out_m[key], atol=1e-5, rtol=1e-5)
        assert sum(p.numel() for p in compact.parameters()) < sum(
            p.numel() for p in model.parameters()
        )


def test_save_load_round_trip(tmp_path, setup):
    model, batches, losses = setup
    x = example_input(model, 2)
    compact = atp.cut_prune(
        model,
        (x[:1],),
        tasks=["b", "seg"],
        losses=losses,
        data=batches,
        pruning_ratio=0.4,
        progress=False,
    )
    path = tmp_path / "compact.pt"
    atp.save_pruned(compact, path)
    loaded = atp.load_pruned(path, ResidualNet, (x[:1],)).eval()
    for task, value in compact.eval()(x).items():
        torch.testing.assert_close(loaded(x)[task], value, atol=0, rtol=0)
    with pytest.raises(ValueError, match="no pruning record"):
        atp.save_pruned(ResidualNet(), tmp_path / "plain.pt")


def test_weight_granularity_gives_paper_masks(setup):
    model, batches, losses = setup
    pruned = atp.cut_prune(
        model,
        example_input(model, 1),
        tasks=["a", "seg"],
        losses=losses,
        data=batches,
        pruning_ratio=0.7,
        granularity="weight",
        progress=False,
    )
    assert abs(mask_sparsity(pruned.cut_pam_masks) - 0.7) <= 0.01
    with pytest.raises(ValueError, match="granularity"):
        atp.cut_prune(
            model,
            example_input(model, 1),
            tasks=["a"],
            losses=losses,
            data=batches,
            pruning_ratio=0.5,
            granularity="block",
        )


def test_tuple_output_model_with_task_names():
    torch.manual_seed(0)
    model = init_nontrivial(ConcatNet())
    batches = make_batches(model, 2)
    x = example_input(model, 2)
    compact = atp.cut_prune(
        model,
        (x[:1],),
        tasks=["right"],
        losses=losses_for(model),
        data=batches,
        pruning_ratio=0.5,
        task_names=["left", "right"],
        progress=False,
    )
    assert compact(x)["right"].shape == (2, 3)
    assert macs(compact, x) < macs(select_tasks(model, ["right"], task_names=["left", "right"]), x)
