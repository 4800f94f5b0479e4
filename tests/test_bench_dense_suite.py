"""The dense CUT part: budgets chosen on validation, paired statistics, headline, report; the
scenes are not a trivial task for the suite's model."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.data import load_data
from benchmarks.dense import dense_scores
from benchmarks.dense_render import (
    comparisons,
    dense_headline,
    dense_summaries,
    dense_tables,
    paired,
)
from benchmarks.dense_suite import PART, DenseSuiteConfig, run_dense_suite
from benchmarks.models import build_model
from benchmarks.training import train

TINY = DenseSuiteConfig(
    data_kwargs={"size": 32, "train": 48, "val": 16, "test": 16, "cache_dir": None},
    subsets=(("seg", "depth"),),
    ratios=(0.5,),
    methods=("cut", "cut-global", "tp-magnitude", "cut-weight", "magnitude-weight"),
    seeds=(0, 1),
    pretrain_epochs=1,
    batch_size=16,
    score_batches=2,
    budgets={"short": 2, "long": 4},
    eval_every=2,
    latency_repeats=1,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_dense_suite(TINY, progress=False, cache_dir=tmp_path_factory.mktemp("cache"))
    finally:
        torch.set_num_threads(threads)


def test_rows_budgets_and_validation_selection(tiny):
    rows = tiny["rows"]
    assert len(rows) == 2 * len(TINY.methods) and len(tiny["dense"]) == 2
    for row in rows:
        points = row["budgets"]
        assert list(points) == ["0", "short", "long"]
        assert points["short"]["step"] <= 2 and points["long"]["step"] <= 4
        # the best validation Δm so far can only improve with a longer budget
        assert points["long"]["val_delta_m"] >= points["short"]["val_delta_m"]
        assert set(points["long"]["test"]) == {"seg", "depth"}
        assert math.isfinite(points["long"]["delta_m"])
    structured = [r for r in rows if r["granularity"] == "channel"]
    dense = tiny["dense"][0]
    assert all(r["macs"] < dense["macs"] for r in structured)
    sparse = [r for r in rows if r["granularity"] == "weight"]
    assert all(r["sparsity"] == pytest.approx(0.5, abs=0.05) for r in sparse)


def test_paired_interval_by_hand():
    mean, ci = paired([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / math.sqrt(3)
    assert mean == 2.0 and ci == pytest.approx([2.0 - half, 2.0 + half])
    assert paired([0.5]) == (0.5, None)


def test_headline_report_and_summary(tiny):
    entries = dense_headline(tiny)
    ids = {e["id"] for e in entries}
    assert ids == {
        "cut.structured.vs_best_baseline",
        "cut.structured.cut-global.vs_best_baseline",
        "cut.unstructured.vs_best_baseline",
    }
    for entry in entries:
        assert entry["seeds"] == 2 and entry["ci95"][0] <= entry["value"] <= entry["ci95"][1]
        assert entry["setting"]["budget"] in ("short", "long") and entry["unit"] == "Δm points"
    by_key = {(c["method"], c["budget"]): c for c in comparisons(tiny)}
    channel = by_key[("cut", "long")]
    assert channel["baseline"] == "tp-magnitude"  # the only structured baseline run
    assert channel["value"] == pytest.approx(channel["cut"] - channel["best"])
    report = dense_tables(tiny)
    assert "| cut | channel |" in report and "seg miou" in report and "95 % CI" in report
    summaries = dense_summaries(tiny)
    assert any("CUT leads" in line or "CUT trails" in line for line in summaries)
    assert any("CUT variant cut-global" in line for line in summaries)
    # the variant runs at the per-layer methods' MACs, never above
    rows = {(r["seed"], r["method"]): r for r in tiny["rows"]}
    for seed in (0, 1):
        assert rows[seed, "cut-global"]["macs"] <= rows[seed, "tp-magnitude"]["macs"]
    assert PART.headline(tiny) == entries


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="unknown"):
        DenseSuiteConfig(methods=("cut", "nope"))
    with pytest.raises(ValueError, match="reserved"):
        DenseSuiteConfig(budgets={"paper": 10})
    with pytest.raises(ValueError, match="positive step"):
        DenseSuiteConfig(budgets={"short": 0})


def test_scenes_are_learnable_but_not_saturated():
    """A short training of the suite's model beats the majority class but stays far below 90 % mIoU."""
    torch.manual_seed(0)
    data = load_data("scenes", size=32, train=96, val=8, test=32, cache_dir=None, tasks=["seg"])
    model = build_model("deeplab", tasks=dict(data.num_classes), in_channels=3, input_size=32,
                        **TINY.model_kwargs)  # fmt: skip
    from benchmarks.data import batches

    train(model, lambda e: batches(data.train, 16, seed=e), data.losses(), epochs=5, lr=3e-3,
          progress=False)  # fmt: skip
    scores = dense_scores(model, data)["seg"]
    target = data.test.targets["seg"]
    majority = torch.bincount(target.flatten()).max().item() / target.numel()
    assert scores["pixel_acc"] > majority + 0.02
    assert scores["miou"] < 0.9


def test_real_data_settings_and_cli_errors(tmp_path, capsys):
    from benchmarks.__main__ import main
    from benchmarks.dense_models import PAPER_DEEPLAB
    from benchmarks.dense_suite import data_settings
    from benchmarks.suites import SUITES

    settings = data_settings("cityscapes", tmp_path)
    assert settings["data"] == "cityscapes" and settings["subsets"] == (("seg", "depth"),)
    assert settings["model_kwargs"] == PAPER_DEEPLAB
    config = SUITES["dense"].configs({"dense": data_settings("nyuv2", tmp_path)})["dense"]
    assert config.data == "nyuv2" and config.data_kwargs == {"root": str(tmp_path)}
    assert data_settings("scenes", None) == {}
    with pytest.raises(ValueError, match="needs --data-root"):
        data_settings("nyuv2", None)
    with pytest.raises(SystemExit):
        main(["run", "--suite", "dense", "--data", "scenes", "--data-root", str(tmp_path)])
    assert "--data-root is for" in capsys.readouterr().err
    # a missing data root stops before anything runs (exit 2), naming the folder
    assert main(["run", "--suite", "dense", "--data", "nyuv2", "--data-root", str(tmp_path / "no"),
                 "--out", str(tmp_path / "out")]) == 2  # fmt: skip
    assert "NYUv2" in capsys.readouterr().err


def test_the_suite_runs_on_real_format_folders(tmp_path):
    """--data nyuv2 reads MTAN's .npy layout through the same part (a tiny model here)."""
    from tests.test_dense import write_npy

    write_npy(tmp_path / "nyu", "train", 24, 16, 16)
    write_npy(tmp_path / "nyu", "val", 8, 16, 16)
    config = DenseSuiteConfig(
        data="nyuv2", data_kwargs={"root": str(tmp_path / "nyu"), "val_fraction": 0.25},
        subsets=(("seg", "normal"),), methods=("cut", "cut-weight"), pretrain_epochs=1,
        batch_size=8, score_batches=1, budgets={"short": 2}, eval_every=2, latency_repeats=1,
    )  # fmt: skip
    result = run_dense_suite(config, progress=False, cache_dir=tmp_path / "cache")
    assert [r["method"] for r in result["rows"]] == ["cut", "cut-weight"]
    assert set(result["dense"][0]["test"]) == {"seg", "normal"}
    assert result["rows"][0]["budgets"]["short"]["test"]["seg"]["miou"] >= 0.0
