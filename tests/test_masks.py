"""cut_masks / apply_masks / finetune: the paper's unstructured masks."""

from __future__ import annotations

import pytest
import torch

from cut_plugin import (
    apply_masks,
    cut_masks,
    finetune,
    mask_sparsity,
    prunable_weights,
    score_tasks,
    select_tasks,
)
from tests.toy_models import (
    ResidualNet,
    init_nontrivial,
    losses_for,
    make_batches,
    same_state,
    state_snapshot,
)


@pytest.fixture(scope="module")
def scored():
    torch.manual_seed(0)
    model = init_nontrivial(ResidualNet())
    batches = make_batches(model, 2)
    selected = select_tasks(model, ["a", "b", "seg"])
    scores = score_tasks(selected, batches, losses_for(model), progress=False)
    return selected, scores, batches


@pytest.mark.parametrize("rule", ["vote", "any", "all", "mean", "max"])
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.9])
def test_achieved_sparsity_within_one_percent(scored, rule, ratio):
    model, scores, _ = scored
    masks = cut_masks(model, scores, pruning_ratio=ratio, rule=rule)
    assert abs(mask_sparsity(masks) - ratio) <= 0.01
    assert set(masks) == set(prunable_weights(model))  # conv/linear weights only
    assert not any(n.endswith("bias") or ".bn" in n for n in masks)


def test_uncalibrated_vote_is_the_papers_literal_rule(scored):
    model, scores, _ = scored
    two = {t: scores[t] for t in ("a", "seg")}
    literal = cut_masks(model, two, pruning_ratio=0.5, calibrate=False)
    assert (
        mask_sparsity(literal) > 0.51
    )  # with two tasks the vote is an AND: it keeps less than each
    calibrated = cut_masks(model, two, pruning_ratio=0.5)
    assert abs(mask_sparsity(calibrated) - 0.5) <= 0.01
    assert not all(torch.equal(literal[n], calibrated[n]) for n in literal)


def test_single_task_keeps_its_own_top_weights(scored):
    model, scores, _ = scored
    one = {"a": scores["a"]}
    masks = cut_masks(model, one, pruning_ratio=0.7)
    names = list(masks)
    flat = torch.cat([scores["a"][n].flatten() for n in names])
    k = round(0.3 * flat.numel())
    threshold = flat.topk(k).values.min()
    kept = torch.cat([masks[n].flatten() for n in names])
    assert int(kept.sum()) == k
    assert (flat[kept] >= threshold).all()
    assert masks["trunk.0.weight"].any()  # the vote threshold is clipped: the backbone survives


def test_head_weights_follow_their_own_task(scored):
    model, scores, _ = scored
    masks = cut_masks(model, scores, pruning_ratio=0.5, rule="all")
    head = masks["heads.b.2.weight"]
    assert head.any() and not head.all()
    shared = masks["trunk.3.conv1.weight"]
    # 'all' keeps a shared weight only if every task keeps it: never more than any single-task verdict
    alone = cut_masks(model, {"a": scores["a"]}, pruning_ratio=0.5)
    assert shared.float().mean() <= 1.0 and alone["trunk.3.conv1.weight"].any()


def test_apply_masks_zeroes_and_leaves_caller_untouched(scored):
    model, scores, _ = scored
    snapshot = state_snapshot(model)
    masks = cut_masks(model, scores, pruning_ratio=0.5)
    pruned = apply_masks(model, masks)
    assert same_state(model, snapshot)
    params = dict(pruned.named_parameters())
    for name, mask in masks.items():
        assert (params[name][~mask] == 0).all()
    x = torch.randn(2, 1, 16, 16)
    assert not torch.allclose(pruned(x)["a"], model(x)["a"])


def test_finetune_keeps_masks_and_learns(scored):
    model, scores, batches = scored
    masks = cut_masks(model, scores, pruning_ratio=0.5)
    pruned = apply_masks(model, masks)
    snapshot = state_snapshot(pruned)
    tuned = finetune(
        pruned, batches, losses_for(ResidualNet()), steps=4, lr=1e-2, masks=masks, progress=False
    )
    assert same_state(pruned, snapshot)
    params = dict(tuned.named_parameters())
    for name, mask in masks.items():
        assert (params[name][~mask] == 0).all()
    assert not torch.equal(
        params["trunk.0.weight"], dict(pruned.named_parameters())["trunk.0.weight"]
    )
    assert not tuned.training  # the mode it was given


def test_finetune_with_teacher_distillation(scored):
    model, _, batches = scored
    tuned = finetune(
        model,
        batches,
        losses_for(ResidualNet()),
        steps=2,
        lr=1e-3,
        teacher=model,
        distill=1.0,
        progress=False,
    )
    before, after = dict(model.named_parameters()), dict(tuned.named_parameters())
    assert not torch.equal(after["trunk.0.weight"], before["trunk.0.weight"])
    with pytest.raises(ValueError, match="teacher"):
        finetune(model, batches, losses_for(ResidualNet()), steps=1, lr=1e-3, distill=1.0)


def test_bad_masks_raise(scored):
    model, scores, _ = scored
    with pytest.raises(ValueError, match="not a parameter"):
        apply_masks(model, {"nope.weight": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(ValueError, match="does not broadcast"):
        apply_masks(model, {"trunk.0.weight": torch.ones(5, dtype=torch.bool)})
    with pytest.raises(ValueError, match="score this model again"):
        cut_masks(model, {"a": {"trunk.0.weight": torch.ones(2)}}, pruning_ratio=0.5)
