"""Checkpoints inside a long part, and its cells in worker processes.

A **cell** is the smallest unit of a part whose result depends only on its own
coordinates and the part's other settings: the dense part's (seed, task subset,
ratio, method), the PAM part's (split, seed, pruner). The full suite's dense part
alone has 816 of them and needs about 39 hours on a 2-core CPU (measured per cell),
so losing a part to a crash, a timeout or a closed laptop at hour 19 is not an option:

- With an output folder every finished cell is written at once to
  ``DIR/cells/<part>/<id>.json`` (atomically) with its key, its version and its
  value. ``--resume DIR`` takes back every stored cell whose key and version
  match and computes only the rest; a run without ``--resume`` starts the
  part's cell folder afresh.
- The **version** of a cell is the code version (:func:`benchmarks.resume.code_version`)
  and the device; its **key** holds the part's settings other than the ones the
  part iterates over (``axes``, hashed) and the cell's coordinates. So adding a
  method, a seed or a ratio to a suite and resuming computes only the new cells.
- ``jobs > 1`` computes the missing cells in that many worker processes
  (``spawn``; each worker runs torch with ``threads`` threads, default the
  machine's cores divided by ``jobs``). A cell's function must be a module-level
  function of picklable arguments; its value is the same as in-process for the
  same thread count (tested), and results come back in the work's order.

A cell that raises stops the part: the cells finished before it, and those the
other workers are computing, are stored, the rest cancelled; a
``KeyboardInterrupt`` stops at once; a worker whose parent is
killed exits within a second instead of computing on as an orphan.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from benchmarks.resume import config_hash

__all__ = ["Cell", "Cells", "cell_settings", "partial_count", "run_cells"]


def cell_settings(config: Any, axes: Sequence[str]) -> str:
    """The hash of a part config's settings other than ``axes`` (the ones its cells iterate over)."""
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(axes) - fields)
    if unknown:
        raise ValueError(f"axes {unknown} are not settings of {type(config).__name__}")
    return config_hash({name: getattr(config, name) for name in sorted(fields - set(axes))})


@dataclass(frozen=True)
class Cell:
    """One unit of work: ``fn(*args)`` (picklable), stored under the JSON-able ``key``."""

    key: Mapping[str, Any]
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()


def _check_jobs(jobs: Any) -> int:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive number of worker processes, got {jobs!r}")
    return jobs


@dataclass(frozen=True)
class Cells:
    """Where a part's cells are stored (``folder``; None: nowhere) and how many processes compute them.

    ``version``: what must match besides the key for a stored cell to be taken
    back (the suite gives the code version and the device). ``threads``: torch
    threads per worker process (default ``os.cpu_count() // jobs``, at least 1).
    ``compute=False``: take back the stored cells only; the others come back as
    None (a partial report of a run still going, :func:`benchmarks.suites.partial_run`).
    """

    folder: Path | None = None
    version: Mapping[str, Any] = field(default_factory=dict)
    jobs: int = 1
    threads: int | None = None
    compute: bool = True

    def __post_init__(self) -> None:
        _check_jobs(self.jobs)
        if self.threads is not None:
            _check_jobs(self.threads)
        if not isinstance(self.compute, bool):
            raise TypeError(f"compute must be a bool, got {self.compute!r}")

    def worker_threads(self) -> int:
        """Torch threads of each worker process."""
        return self.threads or max(1, (os.cpu_count() or 1) // self.jobs)

    def path(self, key: Mapping[str, Any]) -> Path:
        """The file of the cell ``key`` (the folder must be set)."""
        if self.folder is None:
            raise ValueError("these cells are not stored (no folder)")
        text = json.dumps({"key": key, "version": self.version}, sort_keys=True)
        return self.folder / f"{hashlib.sha256(text.encode()).hexdigest()[:20]}.json"

    def load(self, key: Mapping[str, Any]) -> tuple[bool, Any]:
        """``(True, value)`` for a stored cell with this key and version, else ``(False, None)``."""
        if self.folder is None:
            return False, None
        path = self.path(key)
        if not path.is_file():
            return False, None
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):  # a torn file: computed again
            return False, None
        same = stored.get("key") == _plain(key) and stored.get("version") == _plain(self.version)
        return (True, stored["value"]) if same else (False, None)

    def save(self, key: Mapping[str, Any], value: Any, seconds: float) -> None:
        """Store a finished cell (atomically: a whole file or none)."""
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        entry = {"key": key, "version": self.version, "seconds": seconds, "value": value}
        text = json.dumps(entry)
        handle, name = tempfile.mkstemp(dir=self.folder, prefix=".cell-", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as file:
                file.write(text)
            os.replace(name, self.path(key))
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise

    def clear(self) -> None:
        """Forget every stored cell (a fresh, non-resumed run)."""
        if self.folder is not None and self.folder.is_dir():
            shutil.rmtree(self.folder)


def partial_count(cells: Cells, values: Sequence[Any]) -> dict[str, dict[str, int]]:
    """``{"cells": {"stored", "of"}}`` for a part's metrics when only stored cells were read, else ``{}``."""
    if cells.compute:
        return {}
    return {"cells": {"stored": sum(v is not None for v in values), "of": len(values)}}


def _plain(value: Any) -> Any:
    """As the value reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))  # key order kept: tables list budgets in order


def _watch_parent(parent: int) -> None:
    """Exit this worker once the process that started it is gone (killed, not only interrupted)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _start_worker(threads: int, parent: int) -> None:
    torch.set_num_threads(threads)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _timed_call(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn(*args)
    return _plain(value), time.perf_counter() - start


def run_cells(
    cells: Cells, work: Sequence[Cell], *, desc: str = "cells", progress: bool = True
) -> list[Any]:
    """The value of every cell of ``work``, in order: stored ones taken back, the rest computed
    (or None with ``cells.compute`` False).

    Values pass through JSON (what a stored cell reads back as), so a resumed
    and an uninterrupted run return the same thing.
    """
    if not isinstance(cells, Cells):
        raise TypeError(f"cells must be a benchmarks.cells.Cells, got {type(cells).__name__}")
    values: list[Any] = [None] * len(work)
    todo: list[int] = []
    for index, cell in enumerate(work):
        found, value = cells.load(cell.key)
        if found:
            values[index] = value
        else:
            todo.append(index)
    if not cells.compute:
        return values
    bar = tqdm(total=len(work), initial=len(work) - len(todo), desc=desc, disable=not progress)
    if todo:
        bar.set_postfix(stored=len(work) - len(todo), jobs=cells.jobs)

    def finish(index: int, value: Any, seconds: float) -> None:
        cells.save(work[index].key, value, seconds)
        values[index] = value
        bar.update(1)

    try:
        if cells.jobs == 1 or len(todo) <= 1:
            for index in todo:
                finish(index, *_timed_call(work[index].fn, work[index].args))
        else:
            _in_workers(cells, work, todo, finish)
    finally:
        bar.close()
    return values


def _in_workers(
    cells: Cells, work: Sequence[Cell], todo: list[int], finish: Callable[..., None]
) -> None:
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=min(cells.jobs, len(todo)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(cells.worker_threads(), os.getpid()),
    )
    futures = {pool.submit(_timed_call, work[i].fn, work[i].args): i for i in todo}
    saved: set[concurrent.futures.Future] = set()
    try:
        for future in concurrent.futures.as_completed(futures):
            finish(futures[future], *future.result())
            saved.add(future)
    except KeyboardInterrupt:  # the workers got the same SIGINT: stop now
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    except BaseException:  # a cell failed: keep what the other workers are finishing
        for future in futures:
            future.cancel()
        for future in concurrent.futures.as_completed(futures):
            if future not in saved and not future.cancelled() and future.exception() is None:
                finish(futures[future], *future.result())
        pool.shutdown(wait=True)
        raise
    pool.shutdown(wait=True)
