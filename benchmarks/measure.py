"""Measurements: CPU latency (median of repeats), peak memory of a call, run time, environment."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.devices import cpu_copy

__all__ = ["environment", "git_sha", "latency_ms", "peak_memory", "timed"]


@torch.no_grad()
def latency_ms(
    model: nn.Module, x: Tensor, *, repeats: int = 20, warmup: int = 3, threads: int | None = 1
) -> float:
    """Median wall-clock milliseconds of ``model(x)`` in eval mode (mode restored), on the CPU.

    ``threads=1`` (default) measures one CPU core, as on a small edge device, and
    keeps the figure stable on a shared machine; ``None`` uses torch's setting.
    A model on another device is timed as a CPU copy (the protocol's latencies are
    edge CPU latencies, under ``--device cuda`` too).
    """
    model, x = cpu_copy(model), x.cpu()
    was_training = model.training
    previous = torch.get_num_threads()
    model.eval()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
        model.train(was_training)
    return 1000.0 * statistics.median(times)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), seconds)``."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc), so a peak is not hidden by reuse."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_memory(fn: Callable[[], Any], *, interval: float = 0.0005) -> tuple[float, float]:
    """``(peak RSS growth in MiB, seconds)`` of ``fn()``.

    A thread samples this process's resident set every ``interval`` seconds while
    ``fn`` runs (torch releases the GIL in its kernels); the growth is the peak
    minus the RSS just before the call, after freed heap pages were returned to
    the OS. Linux only; elsewhere the memory is ``nan``.
    """
    if not os.path.exists("/proc/self/statm"):
        _, seconds = timed(fn)
        return float("nan"), seconds
    gc.collect()
    _release_free_memory()
    baseline = _rss_bytes()
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        _, seconds = timed(fn)
    finally:
        done.set()
        sampler.join()
    peak[0] = max(peak[0], _rss_bytes())
    return (peak[0] - baseline) / 2**20, seconds


def git_sha() -> str:
    """The current commit (with ``-dirty`` when the tree has changes), or ``unknown``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def environment() -> dict[str, Any]:
    """Versions and machine facts for ``meta_info``."""
    import numpy

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_pruning": "unknown",
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        from importlib.metadata import version

        info["torch_pruning"] = version("torch-pruning")
        info["nni"] = version("nni")
    except Exception:  # nni is optional
        info.setdefault("nni", None)
    return info
