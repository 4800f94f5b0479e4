"""``--device``: the training parts follow it, the CPU measurements stay on the CPU.

No GPU runs in CI. As in ``tests/test_device_following.py``, the CUDA case is
reproduced on the CPU: the dense, cut and pam parts run with ``device="cpu"``
while torch's default device is ``meta``, so a model, tensor or dataset made on
the default device instead of the run's device (or the host, for data) fails,
and the results must equal a plain run's (timings aside).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import nn

from benchmarks import devices, suites
from benchmarks.cut_suite import run_cut_suite
from benchmarks.dense_suite import run_dense_suite
from benchmarks.devices import check_device, cpu_copy, on_host
from benchmarks.measure import latency_ms
from benchmarks.needs import MissingNeeds
from benchmarks.pam_suite import PAMSuiteConfig, run_pam_suite
from tests.test_bench_dense_suite import TINY as TINY_DENSE
from tests.test_bench_pam_suite import TINY as TINY_PAM
from tests.test_bench_suite import TINY as TINY_CUT

TIMINGS = {"method_seconds", "latency_b1_ms", "latency_b16_ms", "latency_b64_ms", "seconds"}


def without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def test_the_dense_part_follows_the_run_device(tmp_path):
    config = dataclasses.replace(
        TINY_DENSE,
        seeds=(0,),
        methods=("cut", "cut-global", "tp-taylor", "scratch", "cut-weight", "random-init-weight"),
    )
    expected = run_dense_suite(config, progress=False, cache_dir=tmp_path)
    with torch.device("meta"):
        result = run_dense_suite(config, progress=False, cache_dir=tmp_path, device="cpu")
    assert without_timings(result) == without_timings(expected)


def test_the_cut_part_follows_the_run_device(tmp_path):
    expected = run_cut_suite(TINY_CUT, progress=False, cache_dir=tmp_path)
    with torch.device("meta"):
        result = run_cut_suite(TINY_CUT, progress=False, cache_dir=tmp_path, device="cpu")
    assert without_timings(result) == without_timings(expected)


def test_the_pam_part_follows_the_run_device(tmp_path):
    config = PAMSuiteConfig(**{**TINY_PAM, "pruners": ("magnitude",)}, cache_dir=str(tmp_path))
    expected = run_pam_suite(config, progress=False)
    with torch.device("meta"):
        result = run_pam_suite(config, progress=False, device="cpu")
    assert without_timings(result) == without_timings(expected)


def test_the_suite_hands_the_device_to_the_parts_that_take_it(monkeypatch):
    """dense/cut/pam get ``device=``; latency stays on the CPU; run_info says where each ran."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    calls: dict[str, dict[str, Any]] = {}
    for name in ("dense", "latency_scaling"):

        def record(_config: Any, name: str = name, **kwargs: Any) -> dict[str, Any]:
            calls[name] = kwargs
            return {}

        monkeypatch.setitem(suites.PARTS, name, dataclasses.replace(suites.PARTS[name], run=record))
    results = suites.run_suite(
        "quick", device="cuda", parts=["dense", "latency_scaling"], progress=False
    )
    assert calls["dense"]["device"] == "cuda"
    assert "device" not in calls["latency_scaling"]
    info = results["run_info"]
    assert info["part_devices"] == {"dense": "cuda", "latency_scaling": "cpu"}
    assert info["failed_parts"] == {}


def test_cuda_without_a_gpu_is_a_missing_need_not_a_silent_cpu_run(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MissingNeeds, match="a CUDA device"):
        suites.run_suite("quick", device="cuda", parts=["cut"], progress=False)
    with pytest.raises(ValueError, match="is_available"):
        check_device("cuda")
    with pytest.raises(ValueError, match="device must be one of"):
        suites.run_suite("quick", device="tpu", parts=["cut"])
    with pytest.raises(ValueError, match="device must be one of"):
        check_device(3)
    assert check_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="1 CUDA device"):
        check_device("cuda:1")
    assert check_device("cuda:0") == torch.device("cuda", 0)


def test_host_helpers():
    model = nn.Linear(3, 2)
    assert cpu_copy(model) is model  # already on the CPU: timed as it is
    with devices.host():
        assert torch.zeros(1).device.type == "cpu"
    with torch.device("meta"), devices.host():
        assert torch.zeros(1).device.type == "cpu"
    values = on_host({"a": [torch.ones(1), (torch.zeros(2),)], "b": 3})
    assert values["b"] == 3 and values["a"][1][0].device.type == "cpu"
    assert latency_ms(model, torch.ones(4, 3), repeats=2, warmup=1) > 0


@pytest.mark.parametrize(("visible", "expected"), [(True, "cuda"), (False, "cpu")])
def test_the_cli_picks_a_visible_gpu_by_default(monkeypatch, tmp_path, visible, expected):
    import benchmarks.__main__ as cli

    seen: dict[str, Any] = {}

    def fake_run_suite(name: str, **kwargs: Any) -> dict[str, Any]:
        seen.update(kwargs)
        raise KeyboardInterrupt  # stop before anything is summarised

    monkeypatch.setattr(torch.cuda, "is_available", lambda: visible)
    monkeypatch.setattr(cli, "run_suite", fake_run_suite)
    assert cli.main(["run", "--parts", "dense", "--out", str(tmp_path)]) == 130
    assert seen["device"] == expected
    assert cli.main(["run", "--device", "cpu", "--out", str(tmp_path)]) == 130
    assert seen["device"] == "cpu"
