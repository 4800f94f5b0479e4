"""The PAM benchmark suite on tiny budgets: deterministic, complete, rendered, validated."""

from __future__ import annotations

import copy
import itertools
import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from benchmarks.attribute_data import ATTRIBUTE_GROUPS, scene_attribute_tasks
from benchmarks.data import DATASETS
from benchmarks.pam_render import pam_headline, pam_summaries, plot_pam, render_pam
from benchmarks.pam_suite import PART, PAMSuiteConfig, run_pam_suite, total_cap

TASKS = ["classes_01234", "classes_56789"]
COMBINATIONS = [[TASKS[0]], [TASKS[1]], TASKS]
METHODS = ["no-merge", "mtz", "pam-paper", "pam-subsets"]
TINY: dict[str, Any] = {
    "pruners": ("taylor", "magnitude"),
    "groupings": ("paper", "subsets"),
    # α = 10 nats: every neuron is irrelevant and the merge fails; the relaxed α is 0.02
    "alpha_conv": 10.0,
    "alpha_fc": 10.0,
    "alpha_scales": (1.0, 0.002),
    "mtz_shares": (1.0,),
    "pretrain_epochs": 1,
    "merge_samples": 32,
    "retrain_steps": 2,
    "finetune_steps": 2,
    "max_pruning_steps": 2,
    "importance_batches": 1,
    "accuracy_tolerance": 100.0,
    "delete_groups": False,  # tolerance 100 would accept deleting every group it can
}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """The tiny suite twice with seed 0: the first trains the networks, the second loads them."""
    config = PAMSuiteConfig(**TINY, cache_dir=str(tmp_path_factory.mktemp("cache")))
    return run_pam_suite(config, progress=False), run_pam_suite(config, progress=False)


def test_same_seed_gives_identical_json(two_runs: tuple[dict, dict]) -> None:
    first, second = two_runs
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_rows_cover_every_method_pruner_and_combination(two_runs: tuple[dict, dict]) -> None:
    rows = two_runs[0]["rows"]
    for pruner in TINY["pruners"]:
        for method in METHODS:
            mine = [r for r in rows if (r["pruner"], r["method"]) == (pruner, method)]
            assert [r["tasks"] for r in mine] == COMBINATIONS
            assert all(set(r["accuracy"]) == set(r["tasks"]) for r in mine)
            macs = [r["macs"] for r in mine]
            if method == "no-merge":  # independent networks: costs add up
                assert macs[2] == macs[0] + macs[1]
            else:  # merged: a task alone switches the other's exclusive groups off
                assert max(macs[:2]) <= macs[2] < macs[0] + macs[1]


def test_pruning_changed_every_network(two_runs: tuple[dict, dict]) -> None:
    runs = two_runs[0]["runs"]
    assert len(runs) == 2 * (2 + 3)  # pruners × (two single networks + three merged)
    for run in runs:
        assert run["steps"] == 2 and run["meets_tolerance"]
        assert run["macs"] < run["unpruned_macs"]
        assert [h["macs"] for h in run["history"]] == sorted(
            (h["macs"] for h in run["history"]), reverse=True
        )


def test_failed_merge_is_relaxed_and_reported(two_runs: tuple[dict, dict]) -> None:
    merges = two_runs[0]["merges"]["class_split"]["0"]
    for method in ("pam-paper", "pam-subsets"):
        failed, chosen = merges[method]["tried"]
        assert "keep no neuron" in failed["error"]
        assert chosen["meets"]
        assert merges[method]["setting"] == {
            "alpha_conv": pytest.approx(0.02),
            "alpha_fc": pytest.approx(0.02),
        }
    assert merges["mtz"]["setting"] == {"share": 1.0}


def test_subsets_equal_paper_for_two_tasks(two_runs: tuple[dict, dict]) -> None:
    rows = two_runs[0]["rows"]

    def body(method: str) -> list[dict]:
        drop = ("method", "grouping")
        return [
            {k: v for k, v in r.items() if k not in drop} for r in rows if r["method"] == method
        ]

    assert body("pam-paper") == body("pam-subsets")


def test_summary_totals_and_ratios_come_from_the_rows(two_runs: tuple[dict, dict]) -> None:
    result = two_runs[0]
    assert len(result["summary"]) == len(TINY["pruners"])
    for entry in result["summary"]:
        rows = [r for r in result["rows"] if r["pruner"] == entry["pruner"]]
        total = {m: sum(r["macs"] for r in rows if r["method"] == m) for m in METHODS}
        assert entry["total_macs"] == total
        assert entry["ratios"]["no-merge/pam-paper"] == pytest.approx(
            total["no-merge"] / total["pam-paper"]
        )
        assert entry["ratios"]["mtz/pam-subsets"] == pytest.approx(
            total["mtz"] / total["pam-subsets"]
        )
        assert all(entry["unpruned_total_macs"][m] > total[m] for m in METHODS)


def test_render_has_every_combination_row_and_one_summary_per_table(
    two_runs: tuple[dict, dict], tmp_path: Path
) -> None:
    result = two_runs[0]
    text = render_pam(result)
    for label in ("| 01234 |", "| 56789 |", "| 01234 + 56789 |"):
        assert text.count(label) == len(TINY["pruners"])
    assert "| tasks | no merging | MTZ | PAM (paper) | PAM (subsets) |" in text
    lines = pam_summaries(result)
    assert len(lines) == len(TINY["pruners"]) and all(line in text for line in lines)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = plot_pam({"metrics": {"pam": result}}, tmp_path, plt)
    assert names == ["pam_macs_class_split.png"]
    assert (tmp_path / names[0]).read_bytes()[:4] == b"\x89PNG"
    assert plot_pam({"metrics": {}}, tmp_path, plt) == []


def test_five_tasks_give_every_combination(tmp_path: Path) -> None:
    options = {**TINY, "pruners": ("magnitude",), "groupings": ("subsets",), "max_pruning_steps": 1,
               "delete_groups": True}  # fmt: skip
    config = PAMSuiteConfig(**options, splits=("class_split5",), cache_dir=str(tmp_path))
    result = run_pam_suite(config, progress=False)
    tasks = ["classes_01", "classes_23", "classes_45", "classes_67", "classes_89"]
    for method in ("no-merge", "mtz", "pam-subsets"):
        rows = [r for r in result["rows"] if r["method"] == method]
        assert len(rows) == 2**5 - 1
        assert len({tuple(r["tasks"]) for r in rows}) == 31
    text = render_pam(result)
    assert "| 01 + 23 + 45 + 67 + 89 |" in text
    assert sum(line.startswith("| ") and " % / " in line for line in text.splitlines()) == 31
    assert len(tasks) == len(result["summary"][0]["tasks"])
    # tolerance 100: group deletion removes whatever it can; every task still has an output
    merged = [r for r in result["runs"] if r["method"] != "no-merge"]
    assert any(r["deleted_groups"] for r in merged if r["method"].startswith("pam-"))
    assert all(r["macs"] < r["history"][-1]["macs"] for r in merged if r["deleted_groups"])
    assert all(r["deleted_groups"] == [] for r in result["runs"] if r["method"] == "no-merge")


def test_scene_attributes_merge_prune_and_report_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two of the five groups: 3 combinations (31 cost 30 s in MergedNetwork.for_tasks copies)
    groups = {"warm": ATTRIBUTE_GROUPS["warm"], "count": ATTRIBUTE_GROUPS["count"]}
    monkeypatch.setitem(DATASETS, "scene_attributes", partial(scene_attribute_tasks, groups=groups))
    options = {**TINY, "pruners": ("taylor",), "groupings": ("paper",), "max_pruning_steps": 1,
               "pretrain_epochs": 1, "batch_size": 16, "merge_samples": 16,
               "alpha_conv": 0.2, "alpha_fc": 0.15}  # α 0.2 fails on 16 images, α·0.002 merges  # fmt: skip
    config = PAMSuiteConfig(**options, splits=("scene_attributes",), attribute_images=(40, 12),
                            validation_fraction=0.25, cache_dir=str(tmp_path))  # fmt: skip
    result = run_pam_suite(config, progress=False)
    assert result["models"] == {
        "scene_attributes": {"name": "vgg", "options": {"width": 8, "depth": 2, "stages": 2}}
    }
    assert sorted(tmp_path.glob("scenes/scene-attributes-*.pt"))  # the images are cached
    single = result["single_task_accuracy"]["scene_attributes"]["0"]
    assert set(single["validation"]) == set(single["test"]) == set(groups)
    for method in ("no-merge", "mtz", "pam-paper"):
        rows = [r for r in result["rows"] if r["method"] == method]
        assert [r["tasks"] for r in rows] == [["warm"], ["count"], ["warm", "count"]]
        assert all(0.0 <= a <= 1.0 for r in rows for a in r["accuracy"].values())
    runs = result["runs"]
    assert len(runs) == 2 + 2 and all(r["steps"] == 1 for r in runs)
    assert all(r["macs"] < r["unpruned_macs"] for r in runs)
    # a single network: four 3×3 convs at 32 px (8, 8, pool, 16, 16) and a linear head to 3 labels
    convs = 32 * 32 * 9 * (3 * 8 + 8 * 8) + 16 * 16 * 9 * (8 * 16 + 16 * 16)
    assert {r["unpruned_macs"] for r in runs if r["method"] == "no-merge"} == {convs + 16 * 3}
    entries = PART.headline(result)
    assert {"pam.best_combination.vs_no_merge", "pam.total.vs_mtz"} <= {e["id"] for e in entries}
    assert all(e["setting"]["data"] == "scene_attributes" for e in entries)
    text = render_pam(result)
    assert "Single-task VGG-style network (width 8, depth 2, stages 2)" in text
    assert "| warm + count |" in text


def test_gates_pruner_on_a_fixed_schedule_runs_every_step(tmp_path: Path) -> None:
    # tolerance 0 and patience 1: the tolerance schedule would stop at the first miss
    options = {**TINY, "pruners": ("gates",), "groupings": ("paper",), "schedule": "fixed",
               "accuracy_tolerance": 0.0, "patience": 1, "gate_batches": 2, "step_ratio": 0.2,
               "pruned_groups": "shared", "max_pruning_steps": 2}  # fmt: skip
    result = run_pam_suite(PAMSuiteConfig(**options, cache_dir=str(tmp_path)), progress=False)
    runs = result["runs"]
    assert {r["method"] for r in runs} == {"no-merge", "mtz", "pam-paper"}
    for run in runs:
        macs = [h["macs"] for h in run["history"]]
        assert len(macs) == 3 and macs[0] > macs[1] > macs[2], run["method"]
        kept = run["history"][run["steps"]]
        assert run["macs"] == kept["macs"]
        assert run["steps"] == 0 or run["meets_tolerance"]
    text = render_pam(result)
    assert "released PAM pruner" in text and "fixed schedule" in text


BAD_CONFIGS: list[tuple[str, Any, type[Exception]]] = [
    ("splits", ("mnist",), ValueError),
    ("splits", "class_split", TypeError),
    ("pruners", ("taylor", "taylor"), ValueError),
    ("groupings", ("all",), ValueError),
    ("alpha_conv", 0.0, ValueError),
    ("alpha_fc", "0.1", TypeError),
    ("alpha_scales", (), TypeError),
    ("mtz_shares", (1.5,), ValueError),
    ("pruned_groups", "exclusive", ValueError),
    ("validation_fraction", 0.0, ValueError),
    ("step_ratio", 1.0, ValueError),
    ("min_step_reduction", 0.9, ValueError),
    ("accuracy_tolerance", -1.0, ValueError),
    ("max_pruning_steps", -1, ValueError),
    ("batch_size", True, TypeError),
    ("patience", 0, ValueError),
    ("merge_samples", 1, ValueError),
    ("threads", 0, ValueError),
    ("cache_dir", "", TypeError),
    ("seeds", (), TypeError),
    ("seeds", (0, 0), ValueError),
    ("conv_summary", "mean", ValueError),
    ("delete_groups", 1, TypeError),
    ("attribute_images", (100,), TypeError),
    ("attribute_images", (100, 1), ValueError),
    ("pruners", ("gate",), ValueError),
    ("schedule", "greedy", ValueError),
    ("gate_batches", 0, ValueError),
    ("gate_lr", 0.0, ValueError),
]


@pytest.mark.parametrize(("field", "value", "error"), BAD_CONFIGS)
def test_config_rejects_bad_values_naming_the_field(
    field: str, value: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match=field):
        PAMSuiteConfig(**{field: value})


def test_run_rejects_a_config_that_is_not_one() -> None:
    with pytest.raises(TypeError, match="PAMSuiteConfig"):
        run_pam_suite({"splits": ("class_split",)})  # type: ignore[arg-type]


def test_headline_has_the_four_claims_with_gap_and_cap(two_runs: tuple[dict, dict]) -> None:
    result = two_runs[0]
    entries = PART.headline(result)
    ids = {e["id"] for e in entries}
    assert ids == {
        f"pam.{k}.vs_{b}" for k in ("best_combination", "total") for b in ("no_merge", "mtz")
    }
    assert len(entries) == 4 * len(TINY["pruners"]) * len(TINY["groupings"])
    for entry in entries:
        assert entry["seeds"] == 1 and entry["goal"] is None  # 2 tasks: reported as measured
        assert entry["setting"]["tasks"] == 2 and isinstance(entry["accuracy_gap"], float)
        assert ("cap" in entry) == entry["id"].startswith("pam.total.")
    json.dumps(entries)
    summary = result["summary"][0]
    total = next(e for e in entries if e["id"] == "pam.total.vs_no_merge"
                 and e["setting"]["pruner"] == summary["pruner"]
                 and e["setting"]["grouping"] == "paper")  # fmt: skip
    assert total["value"] == pytest.approx(summary["ratios"]["no-merge/pam-paper"], abs=1e-3)
    assert "cap" in render_pam(result) and "best combination" in render_pam(result)


def test_cap_of_equal_networks_is_4_3_and_80_31() -> None:
    for n, cap in ((2, 4 / 3), (5, 80 / 31)):
        tasks = [f"t{k}" for k in range(n)]
        combos = [tuple(c) for k in range(1, n + 1) for c in itertools.combinations(tasks, k)]
        macs = {("no-merge", c): 10 * len(c) for c in combos}
        assert sum(macs.values()) / total_cap(macs, combos) == pytest.approx(cap)


def test_seeds_give_mean_sd_and_ci(two_runs: tuple[dict, dict]) -> None:
    """Two seeds faked from one run: the headline is their mean, with sd and a t-interval."""
    one = copy.deepcopy(two_runs[0])
    other = copy.deepcopy(one)
    for key in ("rows", "runs", "summary"):
        for item in other[key]:
            item["seed"] = 1
    for item in other["rows"]:
        if item["method"] == "no-merge":
            item["macs"] *= 2
    for item in other["summary"]:
        item["ratios"] = {
            k: 2 * v if k.startswith("no-merge/") else v for k, v in item["ratios"].items()
        }
    both = {**one, "seeds": [0, 1]}
    for key in ("rows", "runs", "summary"):
        both[key] = one[key] + other[key]
    for key in ("single_task_accuracy", "merges"):
        both[key] = {s: {**v, "1": v["0"]} for s, v in one[key].items()}
    first = {e["id"] + str(e["setting"]): e for e in pam_headline(one)}
    for entry in pam_headline(both):
        base = first[entry["id"] + str(entry["setting"])]
        assert entry["seeds"] == 2 and entry["ci95"] is not None
        if entry["baseline"] == "no-merge":
            assert entry["value"] == pytest.approx(1.5 * base["value"], rel=1e-2)
            assert entry["sd"] > 0
        else:
            assert entry["value"] == pytest.approx(base["value"], abs=1e-3)
    assert "seeds [0, 1]" in render_pam(both)
