"""Checkpoints inside a part: finished cells are stored as they end, a resumed run computes only
the rest, and worker processes give the values the in-process run gives.

A fake part of cells (registered for the test) shows the suite's route; the real dense and
PAM parts are checked on tiny configs: stored rows are taken back without recomputing, and
the dense rows from two worker processes equal the in-process rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import pam_suite, resume, suites
from benchmarks.__main__ import main
from benchmarks.cells import Cell, Cells, cell_settings, partial_count, run_cells
from benchmarks.dense_suite import DenseSuiteConfig, run_dense_suite
from benchmarks.pam_suite import PAMSuiteConfig, run_pam_suite
from benchmarks.part import Part
from benchmarks.parts import PARTS
from tests.test_bench_pam_suite import TINY as TINY_PAM

ROOT = Path(__file__).resolve().parents[1]
LOG = "BENCH_CELL_LOG"  # file each computed cell appends its index to
FAIL = "BENCH_CELL_FAIL"  # the cell index that raises
TIMING = {"method_seconds", "latency_b1_ms", "latency_b16_ms"}  # measured, never equal twice


def square(index: int) -> dict[str, Any]:
    """A cell: logs that it ran, raises at ``$BENCH_CELL_FAIL``, returns a tuple inside a dict."""
    if os.environ.get(LOG):
        with open(os.environ[LOG], "a") as handle:
            handle.write(f"{index}\n")
    if os.environ.get(FAIL) == str(index):
        raise RuntimeError(f"cell {index} broke")
    return {"index": index, "square": (index * index, torch.get_num_threads())}


def sleeper(index: int) -> int:
    """A cell that logs its process id and then takes a minute."""
    with open(os.environ[LOG], "a") as handle:
        handle.write(f"{os.getpid()}\n")
    time.sleep(60)
    return index


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status  # a zombie has exited


def _calls(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def _work(n: int, tag: str = "a") -> list[Cell]:
    return [Cell({"tag": tag, "index": i}, square, (i,)) for i in range(n)]


@pytest.fixture
def log(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cells.log"
    monkeypatch.setenv(LOG, str(path))
    monkeypatch.delenv(FAIL, raising=False)
    return path


def test_stored_cells_are_taken_back_and_only_the_rest_computed(tmp_path, log, monkeypatch):
    cells = Cells(tmp_path / "c", {"code": "x"})
    monkeypatch.setenv(FAIL, "3")
    with pytest.raises(RuntimeError, match="cell 3 broke"):
        run_cells(cells, _work(5), progress=False)
    assert _calls(log) == [0, 1, 2, 3]
    assert len(list((tmp_path / "c").glob("*.json"))) == 3  # the finished ones, nothing torn
    monkeypatch.delenv(FAIL)
    values = run_cells(cells, _work(5), progress=False)
    assert _calls(log) == [0, 1, 2, 3, 3, 4]
    # values read back as JSON in both routes: tuples are lists, order is the work's
    assert [v["index"] for v in values] == [0, 1, 2, 3, 4]
    assert values == json.loads(json.dumps(run_cells(Cells(), _work(5), progress=False)))
    stored = json.loads(cells.path({"tag": "a", "index": 2}).read_text())
    assert stored["key"] == {"tag": "a", "index": 2} and stored["seconds"] >= 0.0


def test_another_version_key_or_a_torn_file_is_computed_again(tmp_path, log):
    folder = tmp_path / "c"
    run_cells(Cells(folder, {"code": "x"}), _work(2), progress=False)
    run_cells(Cells(folder, {"code": "y"}), _work(2), progress=False)  # code changed
    run_cells(Cells(folder, {"code": "x"}), _work(2, tag="b"), progress=False)  # settings changed
    assert _calls(log) == [0, 1, 0, 1, 0, 1]
    cells = Cells(folder, {"code": "x"})
    cells.path({"tag": "a", "index": 1}).write_text('{"key": ')  # killed while writing
    run_cells(cells, _work(2), progress=False)
    assert _calls(log)[6:] == [1]
    cells.clear()
    assert not folder.exists()
    run_cells(Cells(), _work(1), progress=False)  # no folder: nothing stored, always computed
    assert _calls(log)[7:] == [0]


def test_worker_processes_give_the_in_process_values(tmp_path, log):
    cells = Cells(tmp_path / "c", jobs=2, threads=1)
    parallel = run_cells(cells, _work(4), progress=False)
    assert sorted(_calls(log)) == [0, 1, 2, 3]
    assert [v["square"] for v in parallel] == [[i * i, 1] for i in range(4)]  # torch threads set
    assert run_cells(cells, _work(4), progress=False) == parallel  # all taken back
    assert len(_calls(log)) == 4


def test_a_failing_worker_cell_stops_the_run_and_keeps_the_finished(tmp_path, log, monkeypatch):
    monkeypatch.setenv(FAIL, "0")
    cells = Cells(tmp_path / "c", jobs=2, threads=1)
    with pytest.raises(RuntimeError, match="cell 0 broke"):
        run_cells(cells, _work(3), progress=False)
    assert cells.load({"tag": "a", "index": 1})[0]  # the other worker's cell is stored
    assert not cells.load({"tag": "a", "index": 0})[0]
    assert not list((tmp_path / "c").glob(".cell-*"))  # no temporary file left
    monkeypatch.delenv(FAIL)
    done = set(_calls(log))
    run_cells(cells, _work(3), progress=False)
    again = _calls(log)[len(done) :]
    assert 0 in again and set(again) | (done - {0}) == {0, 1, 2}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_workers_exit_when_the_run_is_killed(tmp_path, log):
    script = (
        "from benchmarks.cells import Cell, Cells, run_cells\n"
        "from tests.test_bench_cells import sleeper\n"
        "run_cells(Cells(jobs=2, threads=1), [Cell({'i': i}, sleeper, (i,)) for i in range(2)],"
        " progress=False)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while len(_calls(log)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = _calls(log)
        assert len(workers) == 2, "the workers did not start"
    finally:
        parent.kill()  # SIGKILL: the parent cannot tell its workers
        parent.wait()
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers)


def test_bad_settings_raise():
    for jobs in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="jobs must be a positive"):
            Cells(jobs=jobs)
    with pytest.raises(TypeError, match="benchmarks.cells.Cells"):
        run_cells({"jobs": 2}, _work(1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="compute must be a bool"):
        Cells(compute=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not stored"):
        Cells().path({"a": 1})
    with pytest.raises(ValueError, match=r"axes \['nope'\]"):
        cell_settings(DenseSuiteConfig(), ("seeds", "nope"))


def test_jobs_zero_on_the_command_line_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--suite", "quick", "--jobs", "0"])
    assert "--jobs must be a positive number" in capsys.readouterr().err


def test_cell_keys_leave_out_the_axes_only():
    base = DenseSuiteConfig()
    more = DenseSuiteConfig(methods=("cut", "tp-taylor"), seeds=(0, 1), ratios=(0.3, 0.9))
    assert cell_settings(base, ("subsets", "ratios", "methods", "seeds")) == cell_settings(
        more, ("subsets", "ratios", "methods", "seeds")
    )
    other = DenseSuiteConfig(finetune_lr=1e-4)
    assert cell_settings(base, ("seeds",)) != cell_settings(other, ("seeds",))


# --- the suite's route: a fake part of cells --------------------------------------------------


@dataclass(frozen=True)
class FakeConfig:
    """A fake cell part's settings."""

    cells: int = 4


def _fake_run(config: FakeConfig, *, seed: int, progress: bool, cells: Cells) -> dict[str, Any]:
    values = run_cells(cells, _work(config.cells), progress=False)
    return {"values": values, "seed": seed, **partial_count(cells, values)}


FAKE = Part(
    name="celled",
    title="Fake part of cells",
    config=FakeConfig,
    run=_fake_run,
    render=lambda metrics: f"{len(metrics['values'])} cells",
    cells=True,
)


def test_a_failed_part_resumes_from_its_cells(tmp_path, log, monkeypatch, capsys):
    for module in (resume, suites):  # the parts' versions and run_info.code_version
        monkeypatch.setattr(module, "code_version", lambda root=None: "test-code")
    monkeypatch.setitem(PARTS, "celled", FAKE)
    monkeypatch.setitem(suites.SUITES, "celled", suites.Suite("fake", {"celled": {}}))
    out = tmp_path / "out"
    monkeypatch.setenv(FAIL, "2")
    assert main(["run", "--suite", "celled", "--no-progress", "--out", str(out)]) == 1
    assert len(list((out / "cells" / "celled").glob("*.json"))) == 2
    monkeypatch.delenv(FAIL)
    assert main(["run", "--resume", str(out), "--no-progress", "--jobs", "2"]) == 0
    assert _calls(log)[:3] == [0, 1, 2] and sorted(_calls(log)[3:]) == [2, 3]
    results = json.loads((out / "results.json").read_text())
    assert [v["index"] for v in results["metrics"]["celled"]["values"]] == [0, 1, 2, 3]
    assert results["run_info"]["jobs"] == 2
    # a partial report reads the stored cells only
    monkeypatch.setenv(FAIL, "1")
    assert main(["run", "--suite", "celled", "--no-progress", "--out", str(tmp_path / "p")]) == 1
    monkeypatch.delenv(FAIL)
    calls = len(_calls(log))
    assert main(["partial", str(tmp_path / "p")]) == 0
    assert len(_calls(log)) == calls  # nothing computed
    partial = json.loads((tmp_path / "p" / "partial" / "results.json").read_text())
    assert partial["run_info"]["partial_parts"] == {"celled": {"stored": 1, "of": 4}}
    assert [v["index"] for v in partial["metrics"]["celled"]["values"] if v] == [0]
    assert (
        "Partial report of an unfinished run"
        in (tmp_path / "p" / "partial" / "report.md").read_text()
    )
    assert main(["partial", str(tmp_path / "nothing")]) == 2
    # a run that does not resume starts the cells afresh, and says so
    capsys.readouterr()
    assert main(["run", "--suite", "celled", "--no-progress", "--out", str(out)]) == 0
    assert sorted(_calls(log)[calls:]) == [0, 1, 2, 3]
    assert "the 4 cells stored in" in capsys.readouterr().err


# --- the real parts on tiny configs -----------------------------------------------------------

TINY_DENSE = DenseSuiteConfig(
    data_kwargs={"size": 32, "train": 32, "val": 16, "test": 16, "cache_dir": None},
    methods=("cut", "tp-magnitude"),
    pretrain_epochs=1,
    batch_size=16,
    score_batches=1,
    budgets={"short": 2},
    eval_every=2,
    latency_repeats=1,
)


def _untimed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def test_dense_rows_from_workers_and_from_the_store_equal_the_in_process_rows(tmp_path):
    cache = tmp_path / "cache"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain = run_dense_suite(TINY_DENSE, progress=False, cache_dir=cache)
        cells = Cells(tmp_path / "c", {"code": "x"}, jobs=2, threads=1)
        parallel = run_dense_suite(TINY_DENSE, progress=False, cache_dir=cache, cells=cells)
    finally:
        torch.set_num_threads(threads)
    assert _untimed(parallel["rows"]) == _untimed(json.loads(json.dumps(plain["rows"])))
    assert all(row["threads"] == 1 for row in parallel["rows"])
    assert len(list((tmp_path / "c").glob("*.json"))) == 2
    # taken back: no method runs again
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("benchmarks.dense_suite.dense_cell", _never)
        again = run_dense_suite(TINY_DENSE, progress=False, cache_dir=cache, cells=cells)
        assert again["rows"] == parallel["rows"] and "cells" not in again
        # only what is stored, nothing computed: one row of two
        cells.path(parallel_key(parallel["rows"][1])).unlink()
        reading = Cells(tmp_path / "c", {"code": "x"}, compute=False)
        partial = run_dense_suite(TINY_DENSE, progress=False, cache_dir=cache, cells=reading)
    assert partial["rows"] == parallel["rows"][:1] and partial["cells"] == {"stored": 1, "of": 2}
    assert _untimed(partial["dense"]) == _untimed(parallel["dense"])


def parallel_key(row: dict[str, Any]) -> dict[str, Any]:
    """The cell key of a dense row of TINY_DENSE."""
    settings = cell_settings(TINY_DENSE, ("subsets", "ratios", "methods", "seeds"))
    return {"part": "dense", "settings": settings, "seed": row["seed"], "tasks": row["tasks"],
            "ratio": row["ratio"], "method": row["method"]}  # fmt: skip


def _never(*args: Any) -> Any:
    raise AssertionError("a stored cell was computed again")


def test_pam_cells_in_workers_equal_one_process_and_are_taken_back(tmp_path, monkeypatch):
    """One cell per split × seed × pruner: in one process the pruners share the merges, in two
    workers each makes its own; the merges are deterministic, so the tables are the same."""
    config = PAMSuiteConfig(**{**TINY_PAM, "groupings": ("paper",)},
                            cache_dir=str(tmp_path / "cache"))  # fmt: skip
    assert config.pruners == ("taylor", "magnitude") and config.threads == 1
    cells = Cells(tmp_path / "c", {"code": "x"})
    first = run_pam_suite(config, progress=False, cells=cells)
    assert len(list((tmp_path / "c").glob("*.json"))) == 2
    parallel = run_pam_suite(config, progress=False,
                             cells=Cells(tmp_path / "w", {"code": "x"}, jobs=2, threads=1))  # fmt: skip
    assert json.dumps(parallel, sort_keys=True) == json.dumps(first, sort_keys=True)
    assert [s["pruner"] for s in first["summary"]] == ["taylor", "magnitude"]
    monkeypatch.setattr(pam_suite, "_run_pruner", _never)
    again = run_pam_suite(config, progress=False, cells=cells)
    assert json.dumps(again, sort_keys=True) == json.dumps(first, sort_keys=True)
    # only the taylor cell stored: the tables hold that pruner, counted as partial
    key = {"part": "pam", "settings": cell_settings(config, pam_suite.AXES), "split": "class_split",
           "seed": 0, "pruner": "magnitude"}  # fmt: skip
    cells.path(key).unlink()
    reading = Cells(tmp_path / "c", {"code": "x"}, compute=False)
    partial = run_pam_suite(config, progress=False, cells=reading)
    assert partial["cells"] == {"stored": 1, "of": 2}
    assert {r["pruner"] for r in partial["rows"]} == {"taylor"}
