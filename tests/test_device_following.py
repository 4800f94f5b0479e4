"""Tensors follow the model's device and dtype: every route, with the default device elsewhere.

No GPU runs in CI, so the CUDA case is reproduced on the CPU. A tensor a route
creates without naming a device lands on torch's *default* device, which is
where a CUDA model's code goes wrong (its weights on the GPU, the new tensor on
the CPU). Here the models and batches stay on the CPU while the default device is
``meta``: any tensor made on the default device that meets the model's tensors
raises (torch never mixes the two, 0-dim tensors included), and a module built on
the default device comes back on ``meta``. So each route must (1) run, (2) return
everything on the model's device, and (3) give the same result it gives with the
default device left alone.

Batches and example inputs that skip the library's move to the model (the one
``cut_plugin.vocabulary.move_to``, device and dtype together) are caught by the
dtype half: the same routes run on a float64 model fed float32 data, and a
float32 PAM network fed float64 data, where a forward on the caller's tensors
fails as it would on a CUDA model fed CPU tensors.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from hypothesis import HealthCheck, Phase, given, settings
from torch import Tensor, nn

import adapters.nni as anni
import adapters.torch_pruning as atp
from adapters.registry import build
from cut_plugin import (
    apply_masks,
    cut_masks,
    export_torchscript,
    finetune,
    run_model,
    score_channels,
    score_tasks,
    select_tasks,
)
from cut_plugin.vocabulary import index_tensor, model_device_dtype, move_to
from pam_plugin import MTZMerger, PAMMerger, combination_costs, retrain
from pam_plugin.gates import GateRecorder
from tests.random_models import SPECS, RandomNet, batches_for, cross_entropy_losses
from tests.test_pam_costs import task_batches
from tests.test_pam_networks import inputs_for, networks_for
from tests.toy_models import ResidualNet, example_input, init_nontrivial, make_batches

TASKS = ["a", "seg"]


LOSSES = {t: F.cross_entropy for t in TASKS}


def tensors_of(value: Any) -> Iterator[tuple[str, Tensor]]:
    """Every tensor a route returned: a module's parameters and buffers, nested containers."""
    if isinstance(value, nn.Module):
        yield from value.named_parameters()
        yield from value.named_buffers()
    elif isinstance(value, Tensor):
        yield "", value
    elif isinstance(value, dict):
        for key, item in value.items():
            for name, tensor in tensors_of(item):
                yield f"{key}.{name}", tensor
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            for name, tensor in tensors_of(item):
                yield f"{i}.{name}", tensor


def run_elsewhere(route: Callable[[], Any]) -> Any:
    """``route()`` with torch's default device set to ``meta``; its result checked to be on the CPU."""
    with torch.device("meta"):
        result = route()
    stray = [name for name, t in tensors_of(result) if t.device.type != "cpu"]
    assert not stray, f"returned on the default device instead of the model's: {stray[:5]}"
    return result


def same_results(left: Any, right: Any) -> None:
    mine = dict(tensors_of(left))
    theirs = dict(tensors_of(right))
    assert mine.keys() == theirs.keys()
    if not mine:  # no tensor in the result: plain values
        assert left == right
    for name, tensor in mine.items():
        assert torch.equal(tensor, theirs[name]), name


@pytest.fixture(scope="module")
def cut_case() -> dict[str, Any]:
    torch.manual_seed(0)
    model = init_nontrivial(ResidualNet(8))
    return {"model": model, "x": example_input(model), "data": make_batches(model)}


@pytest.fixture(scope="module")
def pam_case() -> dict[str, Any]:
    networks = networks_for("lenet")
    x = inputs_for("lenet", 24)
    generator = torch.Generator().manual_seed(4)
    labels = {t: torch.randint(0, 3, (24,), generator=generator) for t in "AB"}
    merged = PAMMerger(alpha_conv=0.01, alpha_fc=0.01).merge(networks, x, labels)
    return {
        "networks": networks,
        "x": x,
        "labels": labels,
        "merged": merged,
        "data": task_batches(x, merged),
        "losses": {t: F.cross_entropy for t in merged.tasks},
    }


def cut_routes(case: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    model, x, data = case["model"], case["x"], case["data"]
    small = select_tasks(model, TASKS)
    common = {"tasks": TASKS, "losses": LOSSES, "data": data, "progress": False}

    def masks() -> Any:
        scores = score_tasks(small, data, LOSSES, progress=False)
        return apply_masks(small, cut_masks(small, scores, pruning_ratio=0.5))

    def iterative() -> nn.Module:
        pruner = atp.CUTPruner(model, (x[:1],), pruning_ratio=0.5, iterative_steps=2, **common)
        pruner.step()
        pruner.step()
        return pruner.model

    def nni_pruner() -> Any:
        config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]
        pruner = anni.CUTPruner(copy.deepcopy(small), config, losses=LOSSES, data=data)
        return pruner.compress()

    def registry_pruner() -> nn.Module:
        pruner = build(
            {"pruner": "cut", "framework": "torch_pruning", "pruning_ratio": 0.5},
            model=small,
            example_inputs=x[:1],
            losses=LOSSES,
            data=data,
            progress=False,
        )
        pruner.step()
        return pruner.model

    def tp_pruner() -> nn.Module:
        pruner = build(
            {"pruner": "magnitude", "framework": "torch_pruning", "pruning_ratio": 0.5},
            model=small,
            example_inputs=x[:1],
        )
        pruner.step()
        return pruner.model

    def torchscript(freeze: bool) -> Any:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "compact.pt")
            export_torchscript(small.eval(), x[:1], path, freeze=freeze)
            device, dtype = model_device_dtype(small)
            return torch.jit.load(path, map_location=device)(move_to(x, device, dtype))

    return {
        "select_tasks": lambda: select_tasks(model, TASKS),
        "score_tasks": lambda: score_tasks(small, data, LOSSES, progress=False),
        "score_channels": lambda: score_channels(small, data, LOSSES, progress=False),
        "cut_masks + apply_masks": masks,
        "finetune": lambda: finetune(small, data, LOSSES, steps=2, lr=1e-3, progress=False),
        "cut_prune channels": lambda: atp.cut_prune(model, (x[:1],), pruning_ratio=0.5, **common),
        "cut_prune activation": lambda: atp.cut_prune(
            model, (x[:1],), pruning_ratio=0.5, criterion="activation", **common
        ),
        "cut_prune target_macs": lambda: atp.cut_prune(model, (x[:1],), target_macs=0.5, **common),
        "cut_prune weights": lambda: atp.cut_prune(
            model, (x[:1],), pruning_ratio=0.5, granularity="weight", **common
        ),
        "CUTPruner iterative": iterative,
        "nni CUTPruner": nni_pruner,
        "registry cut pruner": registry_pruner,
        "registry tp magnitude pruner": tp_pruner,
        "export_torchscript": lambda: torchscript(False),
        "export_torchscript frozen": lambda: torchscript(True),
    }


def pam_routes(case: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    networks, x, merged = case["networks"], case["x"], case["merged"]
    data, losses = case["data"], case["losses"]

    def gates() -> Any:
        recorder = GateRecorder(merged)
        with recorder:
            for inputs, targets in data:
                outputs = run_model(merged, inputs)
                sum(F.cross_entropy(outputs[t], y) for t, y in targets.items()).backward()
        merged.zero_grad(set_to_none=True)
        return recorder.scores()

    return {
        "PAMMerger": lambda: PAMMerger(alpha_conv=0.01, alpha_fc=0.01).merge(
            networks, x, case["labels"]
        ),
        "PAMMerger map": lambda: PAMMerger(alpha_conv=0.01, alpha_fc=0.01, summary="map").merge(
            networks, x, case["labels"]
        ),
        "MTZMerger": lambda: MTZMerger(share=0.5).merge(networks, x),
        "MTZMerger released": lambda: MTZMerger(share=0.5, wiring="released").merge(networks, x),
        "combination_costs": lambda: combination_costs(merged, x[:1]),
        "prune_merged": lambda: atp.prune_merged(
            merged,
            (x[:1],),
            importance=tp.importance.GroupMagnitudeImportance(),
            pruning_ratio=0.5,
        ),
        "prune_merged_gates": lambda: atp.prune_merged_gates(
            merged, (x[:1],), data=data, losses=losses
        ),
        "GateRecorder": gates,
        "retrain": lambda: retrain(merged, data, losses, epochs=1, lr=0.01, progress=False),
        "for_tasks": lambda: merged.for_tasks(["A"]),
    }


CUT_NAMES = [
    "select_tasks",
    "score_tasks",
    "score_channels",
    "cut_masks + apply_masks",
    "finetune",
    "cut_prune channels",
    "cut_prune activation",
    "cut_prune target_macs",
    "cut_prune weights",
    "CUTPruner iterative",
    "nni CUTPruner",
    "registry cut pruner",
    "registry tp magnitude pruner",
    "export_torchscript",
    "export_torchscript frozen",
]
PAM_NAMES = [
    "PAMMerger",
    "PAMMerger map",
    "MTZMerger",
    "MTZMerger released",
    "combination_costs",
    "prune_merged",
    "prune_merged_gates",
    "GateRecorder",
    "retrain",
    "for_tasks",
]


def assert_follows(route: Callable[[], Any]) -> None:
    """The route runs with the default device elsewhere and gives what it gives without that."""
    torch.manual_seed(1)
    expected = route()
    torch.manual_seed(1)
    same_results(run_elsewhere(route), expected)


@pytest.mark.parametrize("name", CUT_NAMES)
def test_cut_routes_follow_the_model(cut_case: dict[str, Any], name: str) -> None:
    assert_follows(cut_routes(cut_case)[name])


@pytest.mark.parametrize("name", PAM_NAMES)
def test_pam_routes_follow_the_model(pam_case: dict[str, Any], name: str) -> None:
    assert_follows(pam_routes(pam_case)[name])


def test_every_route_is_parametrized(cut_case: dict[str, Any], pam_case: dict[str, Any]) -> None:
    assert list(cut_routes(cut_case)) == CUT_NAMES
    assert list(pam_routes(pam_case)) == PAM_NAMES


def test_the_check_catches_a_tensor_made_on_the_default_device() -> None:
    """The harness itself: a route that forgets ``device=`` fails here (it would on a GPU)."""
    weight = torch.ones(3)

    def careless() -> Tensor:
        return weight * torch.arange(3.0)  # no device: the default one

    def careful() -> Tensor:
        return weight * torch.arange(3.0, device=weight.device)

    with pytest.raises(RuntimeError, match="device"):
        run_elsewhere(careless)
    with pytest.raises(AssertionError, match="default device"):
        run_elsewhere(lambda: nn.Linear(2, 2))
    assert torch.equal(run_elsewhere(careful), careful())
    index = run_elsewhere(lambda: index_tensor((2, 0), weight))  # the library's index maker
    assert index.dtype == torch.long and index.tolist() == [2, 0]


def floating_dtypes(value: Any) -> set[torch.dtype]:
    modules = [value] if isinstance(value, nn.Module) else []
    if isinstance(value, tuple | list):
        modules = [v for v in value if isinstance(v, nn.Module)]
    return {p.dtype for m in modules for p in m.parameters() if p.is_floating_point()}


@pytest.mark.parametrize("name", CUT_NAMES)
def test_cut_routes_take_batches_to_a_float64_model(cut_case: dict[str, Any], name: str) -> None:
    case = {**cut_case, "model": copy.deepcopy(cut_case["model"]).double()}
    assert case["x"].dtype == torch.float32
    result = cut_routes(case)[name]()
    assert floating_dtypes(result) <= {torch.float64}


@pytest.mark.parametrize("name", PAM_NAMES)
def test_pam_routes_take_batches_to_a_float32_network(pam_case: dict[str, Any], name: str) -> None:
    assert pam_case["x"].dtype == torch.float64
    case = {
        **pam_case,
        "networks": {t: copy.deepcopy(n).float() for t, n in pam_case["networks"].items()},
        "merged": copy.deepcopy(pam_case["merged"]).float(),
    }
    result = pam_routes(case)[name]()
    assert floating_dtypes(result) <= {torch.float32}


@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    phases=[Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
@given(spec=SPECS)
def test_random_architectures_follow_the_model(spec: Any) -> None:
    """cut_prune on drawn architectures (residual, concat, depthwise, in-place forms)."""
    model = RandomNet(spec)
    data = batches_for(model)
    tasks = list(model.heads.keys())

    def route() -> nn.Module:
        return atp.cut_prune(
            model,
            (data[0][0][:1],),
            tasks=tasks,
            losses=cross_entropy_losses(model),
            data=data,
            pruning_ratio=0.5,
            progress=False,
        )

    same_results(run_elsewhere(route), route())
