"""Long benchmark runs lose nothing: needs checked first, results written part by part, failures
recorded, interrupted runs resumed to the same results.

Tiny fake parts (registered for the test) stand in for the real ones, so each test takes
seconds. ``python -m tests.test_bench_resume run ...`` is the CLI with the fakes installed:
the interrupted run is a subprocess that kills itself with SIGKILL in the middle of a part.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks import needs, report, resume, suites
from benchmarks.__main__ import main
from benchmarks.needs import data_needs, missing_message, missing_needs, module_need
from benchmarks.part import Part
from benchmarks.parts import PARTS

ROOT = Path(__file__).resolve().parents[1]
LOG = "BENCH_FAKE_LOG"  # file each fake part appends its name to when it runs
KILL = "BENCH_FAKE_KILL"  # the fake part that SIGKILLs its own process halfway


@dataclass(frozen=True)
class FakeConfig:
    """A fake part's settings."""

    values: int = 3


def fake_part(name: str, *, action: str = "", part_needs: tuple = ()) -> Part:
    """A part whose metrics depend only on its config and seed; ``action`` raises or interrupts."""

    def run(config: FakeConfig, *, seed: int, progress: bool) -> dict[str, Any]:
        if os.environ.get(LOG):
            with open(os.environ[LOG], "a") as handle:
                handle.write(name + "\n")
        values = [random.Random(f"{name}-{seed}-{i}").random() for i in range(config.values)]
        if os.environ.get(KILL) == name:
            os.kill(os.getpid(), signal.SIGKILL)  # killed mid-part: nothing of it is written
        if action == "raise":
            raise RuntimeError(f"{name} broke")
        if action == "interrupt":
            raise KeyboardInterrupt
        return {"values": values, "seed": seed}

    return Part(
        name=name,
        title=f"Fake part {name}",
        config=FakeConfig,
        run=run,
        render=lambda metrics: f"values {metrics['values']}",
        summary=lambda metrics: [f"{name}: {len(metrics['values'])} values"],
        needs=lambda config: list(part_needs),
    )


def install(parts: list[Part], setitem=None) -> None:
    """Register ``parts`` and a suite ``fake`` of them (``setitem``: monkeypatch's, undone after)."""
    setitem = setitem or (lambda mapping, key, value: mapping.__setitem__(key, value))
    for part in parts:
        setitem(PARTS, part.name, part)
    setitem(suites.SUITES, "fake", suites.Suite("fake parts", {p.name: {} for p in parts}))


THREE = ("first", "second", "third")


CODE = "test-code"
"""The code version pinned in the tests and their subprocess: the shared tree may change meanwhile."""


@pytest.fixture
def log(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(resume, "code_version", lambda root=None: CODE)
    path = tmp_path / "calls.log"
    monkeypatch.setenv(LOG, str(path))
    monkeypatch.delenv(KILL, raising=False)
    return path


def _calls(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def _run(*args: str) -> int:
    return main(["run", "--suite", "fake", "--seed", "7", "--no-progress", *args])


def _results(out: Path) -> dict[str, Any]:
    return json.loads((out / "results.json").read_text())


def test_a_failing_part_is_recorded_and_the_others_still_run(tmp_path, log, monkeypatch):
    install([fake_part("first"), fake_part("boom", action="raise"), fake_part("third")],
            monkeypatch.setitem)  # fmt: skip
    assert _run("--out", str(tmp_path / "out")) == 1
    results = _results(tmp_path / "out")
    assert set(results) == {"run_info", "metrics", "meta_info", "headline"}
    assert list(results["metrics"]) == ["first", "third"]
    failure = results["run_info"]["failed_parts"]["boom"]
    assert failure["error"] == "RuntimeError: boom broke"
    assert "in run" in failure["traceback"] and "boom broke" in failure["traceback"]
    assert results["run_info"]["status"] == "finished"
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "**Failed** `boom`: RuntimeError: boom broke" in markdown
    assert "## Fake part third" in markdown
    # a resume reruns only the failed part
    assert _run("--resume", str(tmp_path / "out")) == 1
    assert _calls(log) == ["first", "boom", "third", "boom"]
    assert _results(tmp_path / "out")["run_info"]["rerun_parts"] == {"boom": "failed before"}


def test_a_killed_run_resumes_to_the_same_results(tmp_path, log, monkeypatch):
    install([fake_part(name) for name in THREE], monkeypatch.setitem)
    assert _run("--out", str(tmp_path / "whole")) == 0
    whole = _results(tmp_path / "whole")
    log.unlink()
    out = tmp_path / "cut"
    killed = subprocess.run(
        [sys.executable, "-m", "tests.test_bench_resume", "run", "--suite", "fake", "--seed", "7",
         "--no-progress", "--out", str(out)],
        cwd=ROOT, env={**os.environ, KILL: "second"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    stopped = _results(out)  # written after "first", complete JSON although killed mid-part
    assert stopped["run_info"]["status"] == "running"
    assert list(stopped["metrics"]) == ["first"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert _run("--resume", str(out)) == 0  # suite and seed come from the killed run
    assert _calls(log) == ["first", "second", "second", "third"]
    resumed = _results(out)
    assert resumed["metrics"] == whole["metrics"]
    assert json.dumps(resumed["metrics"]) == json.dumps(whole["metrics"])  # same order too
    info = resumed["run_info"]
    assert info["kept_parts"] == ["first"] and info["status"] == "finished"
    assert info["rerun_parts"] == {"second": "not finished", "third": "not finished"}
    assert info["part_versions"] == whole["run_info"]["part_versions"]


def test_ctrl_c_writes_what_finished_and_resume_completes_it(tmp_path, log, monkeypatch, capsys):
    install([fake_part("first"), fake_part("second", action="interrupt")], monkeypatch.setitem)
    out = tmp_path / "out"
    assert _run("--out", str(out)) == 130
    assert f"--resume {out}" in capsys.readouterr().err
    stopped = _results(out)["run_info"]
    assert stopped["status"] == "interrupted" and stopped["interrupted_part"] == "second"
    assert "**Interrupted** during part `second`" in (out / "report.md").read_text()
    install([fake_part("first"), fake_part("second")], monkeypatch.setitem)
    assert _run("--resume", str(out)) == 0
    assert _calls(log) == ["first", "second", "second"]
    assert list(_results(out)["metrics"]) == ["first", "second"]


def test_resume_reruns_parts_whose_config_seed_or_code_changed(tmp_path, log, monkeypatch):
    install([fake_part(name) for name in THREE], monkeypatch.setitem)
    out = tmp_path / "out"
    assert _run("--out", str(out)) == 0
    assert _run("--resume", str(out)) == 0  # everything kept
    assert _calls(log) == list(THREE)
    monkeypatch.setitem(suites.SUITES["fake"].parts, "second", {"values": 4})
    assert _run("--resume", str(out)) == 0
    assert _results(out)["run_info"]["rerun_parts"] == {"second": "config changed"}
    assert len(_results(out)["metrics"]["second"]["values"]) == 4
    assert main(["run", "--resume", str(out), "--seed", "8", "--no-progress"]) == 0
    assert set(_results(out)["run_info"]["rerun_parts"].values()) == {"seed changed"}
    monkeypatch.setattr(resume, "code_version", lambda root=None: "edited code")
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    assert set(_results(out)["run_info"]["rerun_parts"].values()) == {"code changed"}
    assert _results(out)["run_info"]["seed"] == 8  # the resumed run's seed, not the default
    assert _calls(log) == [*THREE, "second", *THREE, *THREE]


def test_missing_extra_stops_before_anything_runs_or_is_skipped(tmp_path, log, monkeypatch, capsys):
    edge = (module_need("onnxruntime", "onnxruntime latency"),)
    install([fake_part("first"), fake_part("needy", part_needs=edge)], monkeypatch.setitem)
    monkeypatch.setattr(needs, "is_installed", lambda module: module != "onnxruntime")
    out = tmp_path / "out"
    assert _run("--out", str(out)) == 2
    message = capsys.readouterr().err
    assert "needy: module onnxruntime" in message
    assert 'pip install "cut-pam[edge]"' in message and "--skip-missing" in message
    assert _calls(log) == [] and not out.exists()  # nothing ran, nothing written
    assert _run("--out", str(out), "--skip-missing") == 0
    info = _results(out)["run_info"]
    assert list(info["skipped_parts"]) == ["needy"]
    assert "onnxruntime" in info["skipped_parts"]["needy"][0]
    assert list(_results(out)["metrics"]) == ["first"] and _calls(log) == ["first"]
    assert "Skipped `needy`: missing module onnxruntime" in (out / "report.md").read_text()
    # the extra installed, a resume runs only the skipped part
    monkeypatch.setattr(needs, "is_installed", lambda module: True)
    assert _run("--resume", str(out)) == 0
    assert _calls(log) == ["first", "needy"]
    assert _results(out)["run_info"]["skipped_parts"] == {}
    assert list(_results(out)["metrics"]) == ["first", "needy"]


def test_the_real_suites_needs_and_one_message(monkeypatch, tmp_path):
    monkeypatch.setattr(needs, "is_installed", lambda module: False)
    monkeypatch.setattr(needs.torch.cuda, "is_available", lambda: False)
    quick = suites.SUITES["quick"].configs()
    missing = missing_needs(suites.suite_needs(quick, device="cuda"))
    # edge latencies are CPU latencies: that part needs no GPU under --device cuda
    assert {n.name for n in missing["edge"]} == {"onnx", "onnxruntime", "onnxscript"}
    assert {n.name for n in missing["cut"]} == {"mlxtend", "cuda"}
    assert {n.name for n in missing["dense"]} == {"cuda"}  # the scenes are generated
    full = suites.SUITES["full"].configs()
    assert "nni" in {n.name for n in missing_needs(suites.suite_needs(full))["dense"]}  # nni-l1
    message = missing_message(missing)
    assert 'pip install "cut-pam[bench,edge]"' in message
    assert "edge: module onnxruntime" in message and "a CUDA device" in message
    assert "plots: module matplotlib" in message
    root = tmp_path / "fashion"
    (need,) = data_needs("multi_head", {"source": "fashion_mnist", "root": root})
    assert need.is_missing() and str(root) in missing_message({"cut": [need]})
    root.mkdir()
    assert not need.is_missing()


def test_every_extra_named_is_one_of_pyproject(monkeypatch):
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = extras["optional-dependencies"]
    for module, (distribution, extra) in needs.EXTRAS.items():
        if extra is not None:
            assert any(req.startswith(distribution) for req in extras[extra]), module


def test_files_are_replaced_atomically(tmp_path, monkeypatch):
    results = {
        "run_info": {"suite": "s", "seed": 0, "git_sha": "x", "seconds": 1.0},
        "metrics": {},
        "meta_info": {},
    }
    report.write_results(results, tmp_path)
    before = (tmp_path / "results.json").read_text()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        report.write_results({**results, "metrics": {"x": 1}}, tmp_path)
    assert (tmp_path / "results.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "results.json"]


def test_code_version_follows_the_sources(tmp_path):
    for package in resume.PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "a.py").write_text("x = 1\n")
    first = resume.code_version(str(tmp_path))
    (tmp_path / "benchmarks" / "a.py").write_text("x = 2\n")
    resume.code_version.cache_clear()
    assert resume.code_version(str(tmp_path)) != first
    assert resume.config_hash(FakeConfig(3)) != resume.config_hash(FakeConfig(4))


if __name__ == "__main__":
    install([fake_part(name) for name in THREE])
    resume.code_version = lambda root=None: CODE
    sys.exit(main(sys.argv[1:]))
