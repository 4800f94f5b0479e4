"""CUT as an NNI pruner: exact ratios per config, coherent masks, rules that matter,
scheduled pruning, and NNI masks → a compact model equal to the masked one."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("nni")

from nni.compression.pruning import AGPPruner, L1NormPruner, LinearPruner, TaylorPruner  # noqa: E402

from adapters.nni import CUTPruner, param_masks, plain_copy, speedup  # noqa: E402
from tests.test_nni_helpers import (  # noqa: E402
    evaluator_for,
    layer_masks,
    masked_blocks,
    masked_reference,
    max_difference,
    outputs,
    parameter_count,
)
from tests.toy_models import (  # noqa: E402
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

HEAD_OUTPUTS = ["heads.a.2", "heads.b.4", "heads.seg.0"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: with two threads on two busy cores a conv is ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def residual():
    torch.manual_seed(0)
    model = init_nontrivial(ResidualNet())
    return model, make_batches(model, 2), losses_for(model), example_input(model)


def cut(model, config_list, batches, losses, **kw):
    return CUTPruner(model, config_list, losses=losses, data=batches, progress=False, **kw)


def effective_ratio(config):
    ratio = config["sparse_ratio"]
    return min(config.get("max_sparse_ratio", 1.0), max(config.get("min_sparse_ratio", 0.0), ratio))


@pytest.mark.parametrize("granularity", ["default", "out_channel"])
@pytest.mark.parametrize("rule", ["vote", "any"])
def test_each_config_gets_its_exact_ratio_and_the_caller_model_is_unchanged(
    residual, granularity, rule
):
    model, batches, losses, _ = residual
    snapshot, parameters = state_snapshot(model), list(model.parameters())
    convs = {"op_types": ["Conv2d"], "op_names_re": [r"trunk\..*"], "sparse_ratio": 0.5}
    hidden = {"op_types": ["Linear"], "exclude_op_names": HEAD_OUTPUTS, "sparse_ratio": 0.3}
    clipped = {"op_names": ["heads.seg.0"], "sparse_ratio": 0.6, "max_sparse_ratio": 0.25}
    config_list = [{**c, "granularity": granularity} for c in (convs, hidden, clipped)]
    pruner = cut(model, config_list, batches, losses, rule=rule, protect_outputs=False)
    _, masks = pruner.compress()
    norms = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert norms <= set(masks)  # BatchNorm follows its conv
    masks = {n: m for n, m in masks.items() if n not in norms}

    expected = {
        name: convs
        for name, m in model.named_modules()
        if name.startswith("trunk") and isinstance(m, torch.nn.Conv2d)
    }
    expected.update({"heads.b.2": hidden, "heads.seg.0": clipped})
    assert set(masks) == set(expected)
    for name, config in expected.items():
        masked, total = masked_blocks(masks[name]["weight"], granularity)
        assert masked == int(total * effective_ratio(config)), name
    assert same_state(model, snapshot)
    assert all(a is b for a, b in zip(parameters, model.parameters(), strict=True))
    assert not any(hasattr(m, "_nni_wrapper") for m in model.modules())
    assert pruner.bound_model is not model


def test_a_global_group_ranks_layers_together_to_an_exact_total(residual):
    model, batches, losses, _ = residual
    config_list = [
        {
            "op_types": ["Conv2d"],
            "op_names_re": [r"trunk\..*"],
            "sparse_ratio": 0.5,
            "global_group_id": 0,
        }
    ]
    _, masks = cut(model, config_list, batches, losses).compress()
    counts = [masked_blocks(m["weight"], "default") for m in layer_masks(masks).values()]
    masked, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
    assert abs(masked - int(total * 0.5)) <= 1
    assert len({round(c[0] / c[1], 2) for c in counts}) > 1  # not a per-layer 0.5


def test_weight_bias_and_coupled_layer_masks_agree_and_speed_up(residual):
    model, batches, losses, x = residual
    channel = {"granularity": "out_channel", "sparse_ratio": 0.5}
    config_list = [
        {"op_names": ["trunk.0", "trunk.3.conv2"], "dependency_group_id": "stage1", **channel},
        {"op_names": ["trunk.4", "trunk.7.conv2"], "dependency_group_id": "stage2", **channel},
        {"op_names": ["trunk.3.conv1", "trunk.7.conv1", "heads.b.2"], **channel},
    ]
    pruner = cut(model, config_list, batches, losses)
    wrapped, masks = pruner.compress()

    def rows(name):
        return masks[name]["weight"].reshape(masks[name]["weight"].shape[0], -1).amax(1)

    assert torch.equal(rows("trunk.0"), rows("trunk.3.conv2"))
    assert torch.equal(rows("trunk.4"), rows("trunk.7.conv2"))
    for name in ("trunk.4", "heads.b.2"):  # layers with a bias
        assert torch.equal(masks[name]["bias"], rows(name))
    compact = speedup(wrapped, masks, x)
    assert compact.trunk[0].out_channels == 8 and compact.trunk[4].out_channels == 16
    assert compact.heads["b"][2].out_features == 4
    reference = masked_reference(plain_copy(wrapped), param_masks(masks), x)
    assert max_difference(outputs(reference, x), outputs(compact, x)) < 1e-5


def _cut_default(model, batches, losses, task_names=None):
    config_list = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.7}]
    return cut(model, config_list, batches, losses, task_names=task_names)


def _cut_channels(model, batches, losses, task_names=None):
    config_list = [
        {"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5, "granularity": "out_channel"}
    ]
    return cut(model, config_list, batches, losses, task_names=task_names)


def _l1(model, batches, losses, task_names=None):
    return L1NormPruner(
        plain_copy(model), [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5}]
    )


def _taylor(model, batches, losses, task_names=None):
    copy = plain_copy(model)
    evaluator = evaluator_for(copy, batches, losses)
    return TaylorPruner(
        copy, [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5}], evaluator, training_steps=2
    )


CASES = [
    ("cut-elements-residual", _cut_default, ResidualNet, None),
    ("cut-channels-residual", _cut_channels, ResidualNet, None),
    ("cut-channels-concat", _cut_channels, ConcatNet, ["left", "right"]),
    ("cut-channels-mlp", _cut_channels, MLPNet, None),
    ("l1-residual", _l1, ResidualNet, None),
    ("l1-concat", _l1, ConcatNet, ["left", "right"]),
    ("taylor-residual", _taylor, ResidualNet, None),
    ("taylor-mlp", _taylor, MLPNet, None),
]


@pytest.mark.parametrize(
    ("name", "make_pruner", "factory", "task_names"), CASES, ids=[c[0] for c in CASES]
)
def test_sped_up_model_computes_the_masked_model(name, make_pruner, factory, task_names):
    torch.manual_seed(1)
    model = init_nontrivial(factory())
    x, batches, losses = example_input(model), make_batches(model, 2), losses_for(model)
    snapshot = state_snapshot(model)
    pruner = make_pruner(model, batches, losses, task_names)
    wrapped, masks = pruner.compress()
    before = outputs(wrapped, x, task_names)

    compact = speedup(wrapped, masks, x, task_names=task_names)
    reference = masked_reference(plain_copy(wrapped), param_masks(masks), x, task_names)
    assert max_difference(outputs(reference, x, task_names), outputs(compact, x, task_names)) < 1e-5
    assert parameter_count(compact) < parameter_count(model)  # channels really went
    assert (
        max_difference(before, outputs(wrapped, x, task_names)) == 0
    )  # the wrapped model still works
    assert same_state(model, snapshot)


def test_speedup_accepts_the_wrapped_model_the_unwrapped_one_and_the_pruner(residual):
    model, batches, losses, x = residual
    pruner = L1NormPruner(plain_copy(model), [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    wrapped, masks = pruner.compress()
    from_wrapped = outputs(speedup(wrapped, masks, x), x)
    from_pruner = outputs(speedup(pruner, masks, x), x)
    pruner.unwrap_model()
    from_plain = outputs(speedup(wrapped, masks, x), x)
    assert (
        max_difference(from_wrapped, from_pruner) == 0
        and max_difference(from_wrapped, from_plain) == 0
    )


def test_speedup_of_a_single_task_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Conv2d(8, 6, 3),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 2),
    ).eval()  # fmt: skip
    x = torch.randn(2, 1, 10, 10)
    pruner = L1NormPruner(plain_copy(model), [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    wrapped, masks = pruner.compress()
    compact = speedup(wrapped, masks, x)
    assert compact[0].out_channels == 4 and compact[3].out_channels == 3
    reference = masked_reference(plain_copy(wrapped), param_masks(masks), x, ["output"])
    assert max_difference(outputs(reference, x, ["output"]), outputs(compact, x, ["output"])) < 1e-5


def test_speedup_refuses_a_compact_model_that_computes_other_shapes(residual, monkeypatch):
    model, _, _, x = residual
    pruner = L1NormPruner(plain_copy(model), [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    wrapped, masks = pruner.compress()
    broken = plain_copy(wrapped)
    broken.heads["a"][2] = torch.nn.Linear(
        32, 5
    )  # as a mis-mapped Torch-Pruning group would leave it
    monkeypatch.setattr(
        sys.modules["adapters.nni.speedup"], "prune_by_masks", lambda *args, **kwargs: broken
    )
    with pytest.raises(RuntimeError, match="Torch-Pruning could not compact this model"):
        speedup(wrapped, masks, x)


def test_rules_any_and_vote_choose_different_weights(residual):
    model, batches, losses, _ = residual
    config_list = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.6}]
    _, vote = cut(model, config_list, batches, losses, rule="vote").compress()
    _, any_ = cut(model, config_list, batches, losses, rule="any").compress()
    vote, any_ = layer_masks(vote), layer_masks(any_)
    shared = [n for n in vote if n.startswith("trunk")]
    assert shared and vote.keys() == any_.keys()
    assert any(not torch.equal(vote[n]["weight"], any_[n]["weight"]) for n in shared)
    for (
        name
    ) in vote:  # both at the configured ratio: the rules differ in which weights, not how many
        assert masked_blocks(vote[name]["weight"], "default") == masked_blocks(
            any_[name]["weight"], "default"
        )


def test_selected_tasks_drop_the_other_heads(residual):
    model, batches, losses, x = residual
    config_list = [
        {"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5, "granularity": "out_channel"}
    ]
    pruner = cut(model, config_list, batches, losses, tasks=["a", "seg"])
    wrapped, masks = pruner.compress()
    assert not any(name.startswith("heads.b") for name in masks)
    compact = speedup(wrapped, masks, x)
    assert set(outputs(compact, x)) == {"a", "seg"}
    assert outputs(compact, x)["seg"].shape == outputs(model, x)["seg"].shape


@pytest.mark.parametrize("scheduler", [LinearPruner, AGPPruner])
@pytest.mark.parametrize("with_data", [True, False], ids=["data", "evaluator-batches"])
def test_scheduled_pruners_with_cut_inside_reach_the_final_ratio(residual, scheduler, with_data):
    model, batches, losses, _ = residual
    final, times = 0.6, 3
    config_list = [
        {
            "op_types": ["Conv2d"],
            "op_names_re": [r"trunk\..*"],
            "sparse_ratio": final,
            "granularity": "out_channel",
        }
    ]
    evaluator = evaluator_for(model, batches, losses)
    pruner = CUTPruner(
        model, config_list, losses=losses, data=batches if with_data else None, evaluator=evaluator,
        max_batches=2, progress=False,
    )  # fmt: skip
    ratios: list[float] = []
    generate = pruner.generate_masks

    def recording():
        masks = generate()
        counts = [masked_blocks(m["weight"], "out_channel") for m in layer_masks(masks).values()]
        ratios.append(sum(c[0] for c in counts) / sum(c[1] for c in counts))
        return masks

    pruner.generate_masks = recording  # type: ignore[method-assign]
    snapshot = state_snapshot(model)
    _, masks = scheduler(pruner, interval_steps=2, total_times=times).compress(
        max_steps=2 * times, max_epochs=None
    )
    assert len(ratios) == times and ratios == sorted(ratios) and ratios[0] > 0
    for name, mask in layer_masks(masks).items():
        masked, total = masked_blocks(mask["weight"], "out_channel")
        assert masked == int(total * final), name
    assert same_state(model, snapshot)


def test_an_evaluator_alone_feeds_the_batches(residual):
    model, batches, losses, _ = residual
    config_list = [{"op_types": ["Linear"], "exclude_op_names": HEAD_OUTPUTS, "sparse_ratio": 0.5}]
    pruner = CUTPruner(
        model, config_list, losses=losses, evaluator=evaluator_for(model, batches, losses),
        training_steps=2, progress=False,
    )  # fmt: skip
    _, masks = pruner.compress()
    assert masked_blocks(masks["heads.b.2"]["weight"], "default") == (128, 256)


def test_inplace_wraps_the_given_model_as_nni_pruners_do():
    model = init_nontrivial(MLPNet())
    pruner = CUTPruner(
        model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}], losses=losses_for(model),
        data=make_batches(model, 1), inplace=True, progress=False,
    )  # fmt: skip
    assert pruner.bound_model is model and hasattr(model.trunk[0], "_nni_wrapper")
    pruner.unwrap_model()
    assert not hasattr(model.trunk[0], "_nni_wrapper")


@pytest.mark.parametrize(
    ("config_list", "message"),
    [
        (
            [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "granularity": "in_channel"}],
            "granularity must be one of",
        ),
        ([{"op_types": ["Conv2d"], "sparse_threshold": 0.1}], "sparse_threshold"),
        ([{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "ratio": 0.2}], "unknown key"),
        ([{"op_types": ["Conv2d"], "sparse_ratio": 1.5}], r"sparse_ratio must be in \[0.0, 1.0\]"),
        ([{"op_types": ["conv2d"], "sparse_ratio": 0.5}], "selects no layer"),
        ([{"sparse_ratio": 0.5}], "not a valid NNI pruning config"),
    ],
)
def test_bad_config_lists_say_what_is_wrong(residual, config_list, message):
    model, batches, losses, _ = residual
    snapshot = state_snapshot(model)
    with pytest.raises(ValueError, match=message):
        cut(model, config_list, batches, losses)
    assert same_state(model, snapshot)


def test_bad_arguments_say_what_is_wrong(residual):
    model, batches, losses, _ = residual
    config_list = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]
    with pytest.raises(TypeError, match="config_list must be a non-empty list"):
        cut(model, {"op_types": ["Conv2d"]}, batches, losses)
    with pytest.raises(ValueError, match="needs data="):
        CUTPruner(model, config_list, losses=losses)
    with pytest.raises(ValueError, match="rule must be one of"):
        cut(model, config_list, batches, losses, rule="majority")
    with pytest.raises(ValueError, match="no entry for task"):
        cut(model, config_list, batches, {"a": losses["a"]}, tasks=["a", "b"])
    with pytest.raises(ValueError, match="takes no max_steps"):
        cut(model, config_list, batches, losses).compress(max_steps=3, max_epochs=None)
    with pytest.raises(TypeError, match="masks must be NNI"):
        speedup(model, [1, 2], example_input(model))


def test_nni_is_optional_and_never_imported_by_the_core():
    code = (
        "import sys\nimport cut_plugin, pam_plugin, adapters.torch_pruning, adapters.registry\n"
        "print('nni' in sys.modules)\n"
        "sys.modules['nni'] = None\n"
        "try:\n    import adapters.nni\nexcept ImportError as e:\n    print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "False"
    assert 'pip install "cut-pam[nni]"' in lines[-1]
