"""Names → pruners, importances and mergers: every name builds, errors list the choices, imports stay lazy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from adapters import registry
from adapters.registry import available, build, register
from tests.toy_models import (
    ResidualNet,
    example_input,
    init_nontrivial,
    losses_for,
    make_batches,
    same_state,
    state_snapshot,
)

BUILT_IN = {
    ("importance", "torch_pruning"): ["cut", "disparse", "magnitude", "taylor"],
    ("pruner", "torch_pruning"): ["cut", "disparse", "magnitude", "taylor"],
    ("pruner", "nni"): ["cut", "disparse", "l1", "l2", "taylor"],
    ("merger", None): ["mtz", "pam"],
}


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch):
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@pytest.fixture(scope="module")
def objects():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = init_nontrivial(ResidualNet())
    batches = make_batches(model, 1)
    return {
        "model": model,
        "example_inputs": example_input(model),
        "losses": losses_for(model),
        "data": batches,
        "progress": False,
    }


def test_available_lists_the_built_in_names():
    for (kind, framework), names in BUILT_IN.items():
        assert available(kind, framework=framework) == names
    assert available("pruner") == ["cut", "disparse", "l1", "l2", "magnitude", "taylor"]


@pytest.mark.parametrize(
    ("kind", "framework", "name"),
    [(k, f, n) for (k, f), names in BUILT_IN.items() for n in names],
)
def test_every_registered_name_builds_with_its_defaults(objects, kind, framework, name):
    if framework == "nni":
        pytest.importorskip("nni")
        from tests.test_nni_helpers import evaluator_for

        objects = {
            **objects,
            "evaluator": evaluator_for(objects["model"], objects["data"], objects["losses"]),
        }
    model = objects["model"]
    snapshot = state_snapshot(model)
    config = {kind: name} if framework is None else {kind: name, "framework": framework}
    built = build(config, **objects)
    assert same_state(model, snapshot)
    assert not any(hasattr(m, "_nni_wrapper") for m in model.modules())
    if kind == "importance":
        assert callable(built)
    elif kind == "merger":
        assert hasattr(built, "merge")
    elif framework == "nni":
        assert built.bound_model is not model
        if name in ("cut", "disparse", "l1", "l2"):
            _, masks = built.compress()
            assert masks and any(float(m["weight"].mean()) < 1 for m in masks.values())
    else:
        assert built.model is not model
        if name != "taylor":  # Taylor needs gradients first
            built.step()
            assert sum(p.numel() for p in built.model.parameters()) < sum(
                p.numel() for p in model.parameters()
            )


def test_disparse_is_cut_with_rule_any_and_takes_no_rule(objects):
    pytest.importorskip("nni")
    pruner = build({"pruner": "disparse", "framework": "nni"}, **objects)
    assert pruner.rule == "any"
    assert build({"importance": "disparse"}, losses=objects["losses"]).rule == "any"
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['rule'\]"):
        build({"pruner": "disparse", "framework": "nni", "rule": "vote"}, **objects)


def test_config_files_json_and_yaml_build_the_same_pruner(objects, tmp_path):
    pytest.importorskip("nni")
    yaml = pytest.importorskip("yaml")
    config = {
        "pruner": "cut",
        "framework": "nni",
        "config_list": [
            {"op_types": ["Conv2d"], "sparse_ratio": 0.5, "granularity": "out_channel"}
        ],
        "rule": "vote",
        "votes": 2,
    }
    (tmp_path / "cut.json").write_text(json.dumps(config))
    (tmp_path / "cut.yaml").write_text(yaml.safe_dump(config))
    masks = [
        build(tmp_path / f"cut.{suffix}", **objects).compress()[1] for suffix in ("json", "yaml")
    ]
    assert masks[0].keys() == masks[1].keys()
    assert all(torch.equal(masks[0][n]["weight"], masks[1][n]["weight"]) for n in masks[0])
    merger = build({"merger": "mtz", "share": 0.5})
    assert merger.share == 0.5


def test_register_a_new_name_then_build_it():
    @register("merger", "average")
    def average(weight: float = 0.5):
        return ("average", weight)

    assert "average" in available("merger")
    assert build({"merger": "average", "weight": 0.25}) == ("average", 0.25)
    assert build({"merger": "average"}, model="ignored: average takes no model") == ("average", 0.5)
    register("pruner", "average", lambda model: model, framework="nni")
    assert build({"pruner": "average", "framework": "nni"}, model=3) == 3


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (
            ("pruners", "x"),
            ValueError,
            r"kind must be one of \['importance', 'pruner', 'merger', 'prune'\]",
        ),
        (("pruner", "Cut"), ValueError, "lower case"),
        (("pruner", "1cut"), ValueError, "lower case"),
        (("pruner", "my pruner"), ValueError, "lower case"),
        (("pruner", ""), ValueError, "lower case"),
        (("pruner", 3), ValueError, "lower case"),
        (("pruner", "cut"), ValueError, "framework of a pruner must be one of"),
        (("merger", "pam"), ValueError, "'pam' is already registered"),
    ],
)
def test_bad_registrations_raise(args, error, message):
    with pytest.raises(error, match=message):
        register(*args, lambda: None)


def test_duplicates_and_non_callables_raise():
    with pytest.raises(ValueError, match="already registered for framework 'nni'"):
        register("pruner", "l1", lambda: None, framework="nni")
    with pytest.raises(ValueError, match="mergers belong to no framework"):
        register("merger", "zip", lambda: None, framework="nni")
    with pytest.raises(TypeError, match="needs a callable"):
        register("merger", "zip", "not callable")


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        (
            {"pruner": "lottery"},
            ValueError,
            r"unknown pruner 'lottery'; choose from \['cut', 'disparse'",
        ),
        (
            {"pruner": "cut", "framework": "tf"},
            ValueError,
            r"must be one of \['torch_pruning', 'nni'\]",
        ),
        (
            {"pruner": "l1", "framework": "torch_pruning"},
            ValueError,
            r"not available for framework 'torch_pruning'",
        ),
        ({"merger": "pam", "alpha": 0.1}, ValueError, r"unknown key\(s\) \['alpha'\].*alpha_conv"),
        ({"merger": "pam", "framework": "nni"}, ValueError, "mergers belong to no framework"),
        ({"rule": "vote"}, ValueError, "must name exactly one of"),
        ({"pruner": "cut", "merger": "pam"}, ValueError, "must name exactly one of"),
        ({"importance": "cut"}, TypeError, r"needs \['losses'\]"),
        ({"pruner": "magnitude"}, TypeError, r"needs \['model', 'example_inputs'\]"),
        ([("pruner", "cut")], TypeError, "config must be a dict or a JSON/YAML file path"),
        ("config.toml", ValueError, r"must end in \.json, \.yaml or \.yml"),
    ],
)
def test_bad_configs_name_the_problem_and_the_choices(config, error, message):
    with pytest.raises(error, match=message):
        build(config)


def test_unknown_torch_pruning_keys_list_the_valid_ones(objects):
    with pytest.raises(
        ValueError, match=r"unknown key\(s\) \['pruning_ration'\].*'global_pruning'"
    ):
        build({"pruner": "magnitude", "pruning_ration": 0.5}, **objects)


def test_a_key_in_config_and_objects_is_refused(objects):
    with pytest.raises(ValueError, match=r"\['pruning_ratio'\] given both"):
        build({"pruner": "magnitude", "pruning_ratio": 0.3}, pruning_ratio=0.5, **objects)


def test_a_config_file_must_hold_a_mapping(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a mapping"):
        build(path)


def test_the_registry_imports_nni_only_when_an_nni_entry_is_built():
    pytest.importorskip("nni")
    code = (
        "import sys, torch\nfrom adapters.registry import available, build\n"
        "available('pruner'); build({'merger': 'mtz'}); build({'importance': 'magnitude'})\n"
        "print('nni' in sys.modules)\n"
        "build({'pruner': 'l1', 'framework': 'nni'}, model=torch.nn.Sequential(torch.nn.Linear(2, 2)))\n"
        "print('nni' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


PRUNE_BUILT_IN = {
    "torch_pruning": ["cut", "disparse", "magnitude", "merged", "merged-gates", "random", "taylor"],
    "nni": ["l1", "l2"],
}


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_prune_entries_are_listed():
    for framework, names in PRUNE_BUILT_IN.items():
        assert available("prune", framework=framework) == names


@pytest.mark.parametrize(
    ("config", "direct"),
    [
        ({"prune": "cut"}, {"function": "cut_prune", "rule": "vote"}),
        ({"prune": "disparse"}, {"function": "cut_prune", "rule": "any"}),
        (
            {"prune": "cut", "granularity": "weight"},
            {"function": "cut_prune", "granularity": "weight"},
        ),
        ({"prune": "magnitude"}, {"function": "baseline_prune", "importance": "magnitude"}),
        ({"prune": "taylor"}, {"function": "baseline_prune", "importance": "taylor"}),
    ],
)
def test_a_prune_entry_is_the_adapter_call(objects, config, direct):
    """Same model from the registry and from the adapter function; the argument untouched."""
    import adapters.torch_pruning as atp

    model, example = objects["model"], objects["example_inputs"]
    tasks = list(objects["losses"])
    snapshot = state_snapshot(model)
    common = {"tasks": tasks, "losses": objects["losses"], "data": objects["data"]}
    torch.manual_seed(0)
    built = build({**config, "pruning_ratio": 0.5}, **objects, tasks=tasks)
    options = dict(direct)
    function = getattr(atp, options.pop("function"))
    if function is atp.cut_prune:
        options["progress"] = False
    torch.manual_seed(0)
    reference = function(model, example, pruning_ratio=0.5, **common, **options)
    assert same_state(model, snapshot)
    assert _params(built) == _params(reference)
    with torch.no_grad():
        ours, theirs = built.eval()(example), reference.eval()(example)
    assert ours.keys() == theirs.keys()
    assert all(torch.allclose(ours[t], theirs[t]) for t in ours)
    if config.get("granularity") == "weight":
        zeros = sum(int((p == 0).sum()) for p in built.parameters())
        assert zeros > 0.3 * _params(built)
    else:
        assert _params(built) < _params(model)


def test_nni_prune_gives_a_smaller_model_keeping_the_outputs(objects):
    pytest.importorskip("nni")
    model, example = objects["model"], objects["example_inputs"]
    snapshot = state_snapshot(model)
    compact = build({"prune": "l1", "framework": "nni", "pruning_ratio": 0.5}, **objects)
    assert same_state(model, snapshot)
    assert _params(compact) < _params(model)
    with torch.no_grad():
        before, after = model.eval()(example), compact.eval()(example)
    assert {t: v.shape for t, v in before.items()} == {t: v.shape for t, v in after.items()}


def test_merged_prune_takes_an_importance_name():
    from pam_plugin import MTZMerger

    torch.manual_seed(0)
    networks = {
        t: torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(16, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3)
        )
        for t in ("a", "b")
    }
    x = torch.randn(8, 1, 4, 4)
    merged = MTZMerger(share=0.5).merge(networks, x)
    pruned = build(
        {"prune": "merged", "criterion": "magnitude", "pruned_groups": "all"},
        model=merged,
        example_inputs=x[:2],
        pruning_ratio=0.5,
    )
    assert _params(pruned) < _params(merged)
    assert set(pruned(x)) == {"a", "b"}
    with pytest.raises(ValueError, match="unknown importance"):
        build({"prune": "merged", "criterion": "lottery"}, model=merged, example_inputs=x[:2])
