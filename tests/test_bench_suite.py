"""The benchmark machinery: a tiny CUT suite is deterministic by seed; results.json and
report.md have the documented structure; the README section is regenerated, not typed."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.cut_suite import CUTSuiteConfig, run_cut_suite
from benchmarks.needs import MissingNeeds, Need
from benchmarks.report import END, START, render_report, update_readme, write_results

TIMING = {"method_seconds", "latency_b1_ms", "latency_b64_ms"}

TINY = CUTSuiteConfig(
    model="lenet5",
    model_kwargs={},
    data_kwargs={"tasks": ["digit", "parity", "ge5"]},
    subsets=(("digit", "parity"),),
    ratios=(0.5,),
    methods=("cut", "tp-magnitude", "cut-weight"),
    pretrain_epochs=1,
    score_batches=2,
    batch_size=128,
    finetune_steps=3,
    latency_repeats=2,
)


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cache = tmp_path_factory.mktemp("cache")
    try:
        runs = [run_cut_suite(TINY, seed=3, progress=False, cache_dir=cache) for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    return runs


def _without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def test_same_seed_same_results(tiny_results):
    first, second = tiny_results
    assert _without_timing(first["rows"]) == _without_timing(second["rows"])
    assert first["pretrained_accuracy"] == second["pretrained_accuracy"]
    methods = [r["method"] for r in first["rows"]]
    assert methods == ["dense", "cut", "tp-magnitude", "cut-weight"]
    dense, cut = first["rows"][0], first["rows"][1]
    assert cut["macs"] < dense["macs"] and cut["params"] < dense["params"]


def test_results_and_report_structure(tiny_results, tmp_path):
    results = {
        "run_info": {"suite": "tiny", "seed": 3, "git_sha": "x", "seconds": 1.0, "parts": ["cut"]},
        "metrics": {"cut": tiny_results[0]},
        "meta_info": {"cpu_count": 2, "torch": torch.__version__},
    }
    write_results(results, tmp_path)
    stored = json.loads((tmp_path / "results.json").read_text())
    assert set(stored) == {"run_info", "metrics", "meta_info", "headline"}
    assert stored["headline"] == []  # the MNIST cut table makes no headline claim
    report = (tmp_path / "report.md").read_text()
    for method in ("dense", "cut", "tp-magnitude", "cut-weight"):
        assert f"| {method} |" in report
    assert "## Summary" in report and "best mean accuracy" in report
    assert (tmp_path / "cut_accuracy_latency_vs_macs.png").stat().st_size > 1000
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\nafter\n")
    update_readme(tmp_path / "results.json", readme)
    text = readme.read_text()
    assert "old" not in text and "| cut |" in text and text.endswith("after\n")
    assert render_report(stored).count("####") == 1
    # a second, named section is filled on its own; the first one stays
    readme.write_text(text + "<!-- dense:start -->\nold\n<!-- dense:end -->\n")
    update_readme(tmp_path / "results.json", readme, section="dense")
    both = readme.read_text()
    assert both.count("| cut |") == 2 and "old" not in both and "--section dense" in both
    with pytest.raises(ValueError, match="no <!-- other:start -->"):
        update_readme(tmp_path / "results.json", readme, section="other")


def test_cli_list_and_bad_suite(capsys):
    assert main(["list"]) == 0
    assert "quick" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["run", "--suite", "nope"])


def test_config_validation():
    with pytest.raises(ValueError, match="unknown"):
        CUTSuiteConfig(methods=("cut", "magic"))
    with pytest.raises(ValueError, match="ratios"):
        CUTSuiteConfig(ratios=(1.5,))


def test_every_part_keeps_the_contract():
    from benchmarks.parts import PARTS

    for name, part in PARTS.items():
        assert part.name == name
        assert all(
            callable(f)
            for f in (part.config, part.run, part.render, part.summary, part.plots, part.needs)
        )
        assert part.configure({}) == part.config()  # every setting has a default
        assert all(isinstance(need, Need) for need in part.needs(part.config()))
    assert {n.name for n in PARTS["edge"].needs(PARTS["edge"].config())} >= {"onnxruntime"}


def test_suites_are_data_and_every_setting_is_validated():
    from benchmarks.parts import PARTS
    from benchmarks.suites import SUITES, SUITES_FILE

    raw = json.loads(SUITES_FILE.read_text())
    dense = {
        "dense",
        "dense-paper",
        "dense-subsets",
        "dense-subsets-low",
        "dense-subsets-weight",
        "dense-subsets-weight-low",
    }
    assert (
        set(raw)
        == set(SUITES)
        == {
            "quick",
            "full",
            "pam-attributes",
            "pam-attributes-gates",
            "pam-attributes-gates-finetuned",
        }
        | dense
    )
    for name, suite in SUITES.items():
        configs = suite.configs()
        assert list(configs) == list(raw[name]["parts"])
        for part, config in configs.items():
            assert isinstance(config, PARTS[part].config)
    quick = SUITES["quick"].configs()
    assert quick["cut"].subsets == (("digit", "parity"),)  # JSON lists became tuples
    assert "scratch" in SUITES["full"].configs()["cut"].methods


def test_bad_settings_name_the_part_and_the_choices():
    from benchmarks.parts import PARTS

    with pytest.raises(ValueError, match=r"part 'cut' has no setting\(s\) \['ratio'\]"):
        PARTS["cut"].configure({"ratio": 0.5})
    with pytest.raises(ValueError, match="ratios"):
        PARTS["cut"].configure({"ratios": [1.5]})


def test_old_part_name_and_cuda_and_unknown_parts(monkeypatch):
    from benchmarks import suites

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MissingNeeds, match="a CUDA device"):  # tests/test_bench_devices.py
        suites.run_suite("quick", device="cuda", parts=["cut"])
    with pytest.raises(ValueError, match=r"no part\(s\) \['nope'\]"):
        suites.run_suite("quick", parts=["nope"])
    calls = []
    fake = suites.PARTS["latency_scaling"].__class__(
        **{**suites.PARTS["latency_scaling"].__dict__, "run": lambda c, **kw: calls.append(c) or {}}
    )
    monkeypatch.setitem(suites.PARTS, "latency_scaling", fake)
    with pytest.warns(DeprecationWarning, match="now called 'latency_scaling'"):
        results = suites.run_suite("quick", parts=["speedup"], progress=False)
    assert list(results["metrics"]) == ["latency_scaling"] and len(calls) == 1
    # a part whose metrics hold no claim readable is reported, not dropped silently
    assert [e["id"] for e in results["headline"]] == ["latency_scaling.headline_failed"]


def test_latency_scaling_measures_a_compact_model_and_reads_old_results():
    from benchmarks.latency_scaling import (
        LatencyScalingConfig,
        latency_scaling_headline,
        latency_scaling_summaries,
        run_latency_scaling,
    )

    metrics = run_latency_scaling(LatencyScalingConfig(widths=(8,), repeats=1), seed=0)
    (row,) = metrics["rows"]
    assert row["compact_macs"] < row["dense_macs"] and row["mac_reduction"] > 1.5
    # PyTorch eager, and the frozen, optimised TorchScript module: both timed, both in the headline
    assert {"torch", "torchscript"} <= set(row["runtimes"])
    assert all(t["compact_ms"] > 0 and t["efficiency"] > 0 for t in row["runtimes"].values())
    headline = latency_scaling_headline(metrics)
    assert {e["setting"]["runtime"] for e in headline} >= {"torch", "torchscript"}
    faster = [s for s in latency_scaling_summaries(metrics) if "TorchScript against eager" in s]
    assert len(faster) == len(metrics["round_to"]) and all("width 8: " in s for s in faster)
    results = {
        "run_info": {"suite": "old", "seed": 0, "git_sha": "x", "seconds": 1.0},
        "metrics": {"speedup": metrics},  # a results.json written before the rename
        "meta_info": {"cpu_count": 2, "torch": torch.__version__},
    }
    report = render_report(results)
    assert "Latency speed-up against MAC reduction, by width" in report and "| 8 |" in report
