"""select_tasks / task_parameters: selected outputs unchanged, the rest gone, caller untouched."""

from __future__ import annotations

import pytest
import torch

from cut_plugin import select_tasks, task_parameters
from tests.toy_models import (
    ConcatNet,
    MLPNet,
    ResidualNet,
    Untraceable,
    UntraceableNoHeads,
    example_input,
    init_nontrivial,
    same_state,
    state_snapshot,
)

CASES = [
    ("residual-dict", ResidualNet, ["a", "seg"], None),
    ("residual-one", ResidualNet, ["b"], None),
    ("concat-tuple", ConcatNet, ["right"], ["left", "right"]),
    ("mlp-dict", MLPNet, ["q"], None),
]


@pytest.mark.parametrize(
    ("name", "factory", "tasks", "task_names"), CASES, ids=[c[0] for c in CASES]
)
def test_selected_outputs_equal_original_and_rest_is_gone(name, factory, tasks, task_names):
    torch.manual_seed(0)
    model = init_nontrivial(factory())
    snapshot = state_snapshot(model)
    x = example_input(model)
    selected = select_tasks(model, tasks, task_names=task_names)
    reference = model(x)
    if isinstance(reference, tuple):
        reference = dict(zip(task_names, reference, strict=True))
    out = selected(x)
    assert list(out) == tasks
    for task in tasks:
        torch.testing.assert_close(out[task], reference[task])
    dropped = [t for t in model.tasks if t not in tasks]
    names = dict(selected.named_parameters())
    for task in dropped:
        assert not any(n.startswith(f"heads.{task}.") for n in names), f"head {task} kept"
    assert sum(p.numel() for p in selected.parameters()) < sum(
        p.numel() for p in model.parameters()
    )
    assert same_state(model, snapshot)
    assert all(p is not q for p in selected.parameters() for q in model.parameters())


def test_untraceable_model_falls_back_to_heads():
    model = Untraceable()
    x = example_input(model)
    selected = select_tasks(model, ["p"])
    assert list(selected(x)) == ["p"]
    torch.testing.assert_close(selected(x)["p"], model(x)["p"])
    assert "q" in model.heads  # caller untouched


def test_untraceable_without_heads_says_how_to_fix():
    with pytest.raises(ValueError, match="heads"):
        select_tasks(UntraceableNoHeads(), ["p"])


def test_task_parameters_shared_trunk_and_own_heads():
    model = ResidualNet()
    used = task_parameters(model, (example_input(model),))
    assert set(used) == {"a", "b", "seg"}
    trunk = {n for n, _ in model.named_parameters() if n.startswith("trunk.")}
    for task, names in used.items():
        assert trunk <= names
        heads = {n.split(".")[1] for n in names if n.startswith("heads.")}
        assert heads == {task}
    subset = task_parameters(model, (example_input(model),), tasks=["b"])
    assert list(subset) == ["b"]


def test_task_parameters_restores_flags_and_mode():
    model = ResidualNet().train()
    model.trunk[0].weight.requires_grad_(False)
    used = task_parameters(model, example_input(model))
    assert "trunk.0.weight" in used["a"]  # frozen but used
    assert model.training and not model.trunk[0].weight.requires_grad
