"""Edge export: ONNX (onnxruntime == PyTorch, dynamic batch) and TorchScript (reload == PyTorch).

One table of models (toy multi-task nets, a CUT-compact model, PAM and MTZ
merged networks); each test body runs over it. The ONNX tests skip when
onnxruntime / onnxscript are missing (``pip install "cut-pam[edge]"``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from cut_plugin.export import check_onnx, export_onnx, export_torchscript
from tests.toy_models import (
    ConcatNet,
    MLPNet,
    ResidualNet,
    Untraceable,
    example_input,
    init_nontrivial,
    losses_for,
    make_batches,
    same_state,
    state_snapshot,
)

try:
    import pam_plugin
    from tests.test_pam_networks import inputs_for, networks_for
except ImportError:  # pragma: no cover - pam_plugin is part of the distribution
    pam_plugin = None  # type: ignore[assignment]

Case = tuple[nn.Module, Callable[[int], Tensor]]


def _toy(model: nn.Module) -> Case:
    return model, lambda batch: example_input(model, batch, seed=batch)


def _residual() -> Case:
    torch.manual_seed(0)
    return _toy(init_nontrivial(ResidualNet()))


def _mlp() -> Case:
    torch.manual_seed(0)
    return _toy(MLPNet().eval())


def _cut() -> Case:
    from adapters.torch_pruning import cut_prune

    dense = _residual()[0]
    compact = cut_prune(
        dense,
        (example_input(dense),),
        tasks=["a", "seg"],
        losses=losses_for(dense),
        data=make_batches(dense),
        pruning_ratio=0.5,
        progress=False,
    ).eval()
    assert isinstance(compact, type(dense))  # the user's class is kept
    assert sum(p.numel() for p in compact.parameters()) < sum(p.numel() for p in dense.parameters())
    return compact, lambda batch: example_input(dense, batch, seed=batch)


def _merged(method: str) -> Case:
    if pam_plugin is None:
        pytest.skip("pam_plugin does not import")
    # float32: onnxruntime's CPU kernels have no float64 Conv
    networks = {task: net.float() for task, net in networks_for("lenet").items()}
    x = inputs_for("lenet", 24).float()
    if method == "pam":
        generator = torch.Generator().manual_seed(3)
        labels = {
            t: torch.randint(0, 3 + i, (24,), generator=generator) for i, t in enumerate("AB")
        }
        merged = pam_plugin.PAMMerger().merge(networks, x, labels)
    else:
        merged = pam_plugin.MTZMerger(share=0.5).merge(networks, x)
    return merged.eval(), lambda batch: inputs_for("lenet", batch, seed=batch).float()


CASES: dict[str, Callable[[], Case]] = {
    "residual": _residual,
    "mlp": _mlp,
    "cut_compact": _cut,
    "pam": lambda: _merged("pam"),
    "mtz": lambda: _merged("mtz"),
}


@cache
def case(name: str) -> Case:
    """Each model is built once per session (CUT pruning and PAM merging take a moment)."""
    return CASES[name]()


def reference(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    with torch.no_grad():
        return dict(model.eval()(x))


@pytest.fixture
def onnx_deps() -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnx")


# ---------------------------------------------------------------- ONNX


@pytest.mark.usefixtures("onnx_deps")
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("name", list(CASES))
def test_onnx_matches_pytorch_at_two_batch_sizes(name: str, exporter: str, tmp_path: Path) -> None:
    model, inputs = case(name)
    model.train()  # export must use an eval copy and leave the mode and state alone
    before = state_snapshot(model)
    path = tmp_path / "model.onnx"
    names = export_onnx(model, inputs(4), path, exporter=exporter)  # type: ignore[arg-type]
    assert model.training and same_state(model, before)
    model.eval()
    assert names == list(reference(model, inputs(2)))
    assert not (tmp_path / "model.onnx.data").exists()  # one self-contained file
    for batch in (1, 7):
        assert check_onnx(model, path, inputs(batch), atol=1e-5) <= 1e-5


@pytest.mark.usefixtures("onnx_deps")
def test_check_onnx_agrees_with_a_direct_onnxruntime_run(tmp_path: Path) -> None:
    import onnxruntime

    model, inputs = case("cut_compact")
    path = tmp_path / "compact.onnx"
    names = export_onnx(model, inputs(3), path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == names == ["a", "seg"]
    x = inputs(5)
    results = dict(zip(names, session.run(names, {"input": x.numpy()}), strict=True))
    expected = reference(model, x)
    worst = max(float((torch.from_numpy(results[t]) - expected[t]).abs().max()) for t in names)
    assert worst <= 1e-5
    assert check_onnx(model, path, x) == pytest.approx(worst, abs=1e-7)


@pytest.mark.usefixtures("onnx_deps")
def test_check_onnx_names_the_task_that_differs(tmp_path: Path) -> None:
    model, inputs = case("residual")
    path = tmp_path / "model.onnx"
    export_onnx(model, inputs(4), path, exporter="torchscript")
    changed = ResidualNet()
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.heads["b"][-1].bias.add_(0.5)  # type: ignore[index, union-attr]
    with pytest.raises(ValueError, match="task 'b'"):
        check_onnx(changed.eval(), path, inputs(2))
    assert check_onnx(changed, path, inputs(2), atol=1.0) == pytest.approx(0.5, abs=1e-5)


@pytest.mark.usefixtures("onnx_deps")
def test_onnx_task_names_pick_order_and_name_tuple_outputs(tmp_path: Path) -> None:
    model, inputs = case("residual")
    path = tmp_path / "subset.onnx"
    assert export_onnx(model, inputs(2), path, task_names=["seg", "a"], exporter="torchscript") == [
        "seg",
        "a",
    ]
    assert check_onnx(model, path, inputs(3)) <= 1e-5
    concat = ConcatNet().eval()
    path = tmp_path / "tuple.onnx"
    assert export_onnx(concat, example_input(concat), path, task_names=["left", "right"]) == [
        "left",
        "right",
    ]
    assert check_onnx(concat, path, example_input(concat, 3)) <= 1e-5


@pytest.mark.usefixtures("onnx_deps")
def test_onnx_opset_is_the_one_asked_for(tmp_path: Path) -> None:
    import onnx

    model, inputs = case("mlp")
    for exporter, opset in (("torchscript", 17), ("dynamo", 18)):
        path = tmp_path / f"{exporter}.onnx"
        export_onnx(model, inputs(2), path, opset=opset, exporter=exporter)  # type: ignore[arg-type]
        assert [o.version for o in onnx.load(str(path)).opset_import if o.domain == ""] == [opset]
        assert check_onnx(model, path, inputs(3)) <= 1e-5
    with pytest.raises(ValueError, match="exporter='torchscript'"):
        export_onnx(model, inputs(2), tmp_path / "old.onnx", opset=17)


class TwoInputs(nn.Module):
    """Two inputs passed positionally."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(4, 3)
        self.meta = nn.Linear(2, 3)

    def forward(self, x: Tensor, m: Tensor) -> dict[str, Tensor]:
        h = torch.relu(self.image(x) + self.meta(m))
        return {"sum": h.sum(1, keepdim=True), "h": h}


@pytest.mark.usefixtures("onnx_deps")
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_onnx_two_inputs_and_fixed_batch(exporter: str, tmp_path: Path) -> None:
    model = TwoInputs().eval()
    path = tmp_path / "two.onnx"
    export_onnx(model, (torch.randn(3, 4), torch.randn(3, 2)), path, exporter=exporter)  # type: ignore[arg-type]
    assert check_onnx(model, path, (torch.randn(6, 4), torch.randn(6, 2))) <= 1e-5
    export_onnx(model, (torch.randn(3, 4), torch.randn(3, 2)), path, dynamic_batch=False)
    with pytest.raises(Exception, match="(?i)dimension|shape|got"):
        check_onnx(model, path, (torch.randn(6, 4), torch.randn(6, 2)))


class BakedBatch(nn.Module):
    """Reshapes with a literal batch size: not exportable with a free batch axis."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"y": self.fc(x.reshape(4, 6))}


@pytest.mark.usefixtures("onnx_deps")
def test_dynamo_export_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="fixes the batch size.*dynamic_batch=False"):
        export_onnx(BakedBatch(), torch.randn(4, 2, 3), tmp_path / "baked.onnx")
    export_onnx(BakedBatch(), torch.randn(4, 2, 3), tmp_path / "baked.onnx", dynamic_batch=False)
    with pytest.raises(RuntimeError, match="exporter='torchscript'"):
        export_onnx(Untraceable().eval(), torch.randn(2, 12), tmp_path / "untraceable.onnx")


# ---------------------------------------------------------------- TorchScript


@pytest.mark.parametrize("name", list(CASES))
def test_torchscript_reload_matches_pytorch(name: str, tmp_path: Path) -> None:
    model, inputs = case(name)
    model.train()
    before = state_snapshot(model)
    path = tmp_path / "model.pt"
    export_torchscript(model, inputs(4), path)
    assert model.training and same_state(model, before)
    loaded = torch.jit.load(str(path))
    for batch in (1, 7):
        x = inputs(batch)
        expected = reference(model, x)
        with torch.no_grad():
            got = loaded(x)
        assert list(got) == list(expected)
        for task in expected:
            torch.testing.assert_close(got[task], expected[task], rtol=0, atol=1e-6)


def _ops(module: torch.jit.ScriptModule) -> set[str]:
    return {node.kind() for node in module.inlined_graph.nodes()}


@pytest.mark.parametrize("name", list(CASES))
def test_frozen_torchscript_folds_batchnorm_and_matches_pytorch(name: str, tmp_path: Path) -> None:
    model, inputs = case(name)
    model.train()
    before = state_snapshot(model)
    path = tmp_path / "frozen.pt"
    export_torchscript(model, inputs(4), path, freeze=True)
    assert model.training and same_state(model, before)
    loaded = torch.jit.load(str(path))
    optimized = torch.jit.optimize_for_inference(torch.jit.load(str(path)))
    has_batchnorm = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert "aten::batch_norm" not in _ops(loaded)  # folded (or there was none)
    if has_batchnorm:
        unfrozen = tmp_path / "traced.pt"
        export_torchscript(model, inputs(4), unfrozen)
        assert "aten::batch_norm" in _ops(torch.jit.load(str(unfrozen)))
    for batch in (1, 7):
        x = inputs(batch)
        expected = reference(model, x)
        with torch.no_grad():
            outputs = {"frozen": loaded(x), "optimized": optimized(x)}
        for got in outputs.values():
            assert list(got) == list(expected)
            for task in expected:
                torch.testing.assert_close(got[task], expected[task], rtol=1e-4, atol=1e-5)


def test_frozen_torchscript_is_checked_before_it_is_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cut_plugin.torchscript as torchscript

    model, inputs = case("residual")
    other = ResidualNet().eval()
    with torch.no_grad():
        wrong = torch.jit.freeze(torch.jit.trace(other, (inputs(4),), strict=False))
    monkeypatch.setattr(torchscript.torch.jit, "freeze", lambda module: wrong)
    path = tmp_path / "wrong.pt"
    with pytest.raises(RuntimeError, match="torch.jit.freeze changed task .* freeze=False"):
        export_torchscript(model, inputs(4), path, freeze=True)
    assert not path.exists()


def test_freeze_must_be_a_bool(tmp_path: Path) -> None:
    model, inputs = case("mlp")
    with pytest.raises(TypeError, match="freeze must be True or False"):
        export_torchscript(model, inputs(2), tmp_path / "m.pt", freeze="yes")  # type: ignore[arg-type]


def test_torchscript_tuple_output_becomes_a_dict(tmp_path: Path) -> None:
    model = ConcatNet().eval()
    path = tmp_path / "concat.pt"
    export_torchscript(model, example_input(model), path, task_names=["left", "right"])
    x = example_input(model, 3)
    got = torch.jit.load(str(path))(x)
    with torch.no_grad():
        left, right = model(x)
    assert list(got) == ["left", "right"]
    torch.testing.assert_close(got["left"], left, rtol=0, atol=1e-6)
    torch.testing.assert_close(got["right"], right, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- errors and imports


def test_bad_paths_and_inputs_raise_clear_errors(tmp_path: Path) -> None:
    model = MLPNet().eval()
    x = torch.randn(2, 12)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_torchscript(model, x, tmp_path / "missing" / "model.pt")
    with pytest.raises(IsADirectoryError):
        export_onnx(model, x, tmp_path)
    with pytest.raises(TypeError, match="path"):
        export_onnx(model, x, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"example_inputs\[1\]"):
        export_torchscript(model, (x, "not a tensor"), tmp_path / "m.pt")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="example_inputs"):
        export_onnx(model, [], tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        export_onnx("model", x, tmp_path / "m.onnx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exporter"):
        export_onnx(model, x, tmp_path / "m.onnx", exporter="tflite")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, x, tmp_path / "m.onnx", opset=2)
    with pytest.raises(ValueError, match="unknown task"):
        export_onnx(model, x, tmp_path / "m.onnx", task_names=["p", "zzz"])
    with pytest.raises(TypeError, match="task_names"):
        export_torchscript(ConcatNet().eval(), example_input(ConcatNet()), tmp_path / "c.pt")
    with pytest.raises(ValueError, match="same first"):
        export_onnx(TwoInputs(), (torch.randn(3, 4), torch.randn(2, 2)), tmp_path / "m.onnx")
    with pytest.raises(FileNotFoundError, match="export it first"):
        check_onnx(model, tmp_path / "absent.onnx", x)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_module_imports_no_onnx_and_names_the_extra_when_missing(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import cut_plugin.export\n"
        "print(sorted(m for m in ('onnx', 'onnxruntime', 'onnxscript') if m in sys.modules))\n"
        "sys.modules['onnxruntime'] = None\n"
        "import torch\n"
        "from tests.toy_models import MLPNet\n"
        "open(sys.argv[1], 'wb').close()\n"
        "try:\n"
        "    cut_plugin.export.check_onnx(MLPNet(), sys.argv[1], torch.randn(2, 12))\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "m.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "[]"
    assert 'pip install "cut-pam[edge]"' in lines[1]


# ---------------------------------------------------------------- benchmark


@pytest.mark.usefixtures("onnx_deps")
def test_edge_benchmark_measures_dense_and_compact() -> None:
    from benchmarks.edge_latency import EdgeConfig, render_edge, run_edge_latency

    config = EdgeConfig(
        models={"lenet5": {}},
        batch_sizes=(1, 3),
        repeats=1,
        warmup=0,
        rounds=1,
        score_batches=1,
        exporter="torchscript",
    )
    results = run_edge_latency(config, progress=False)
    rows = results["metrics"]["rows"]
    assert {(r["variant"], r["batch"]) for r in rows} == {
        (v, b) for v in ("dense", "compact") for b in (1, 3)
    }
    assert all(
        r["torch_ms"] > 0 and r["ort_ms"] > 0 and r["onnx_max_abs_diff"] <= 1e-4 for r in rows
    )
    (ratio, _) = results["metrics"]["ratios"]
    assert ratio["params_ratio"] < 0.6  # half the channels: about a quarter of the weights
    table = render_edge(results)
    assert table.count("| lenet5 |") == 2 and "speed-up" in table


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("models", {"alexnet": {}}),
        ("pruning_ratio", 1.0),
        ("batch_sizes", (0,)),
        ("repeats", 0),
        ("kept_tasks", ("nope",)),
        ("exporter", "tflite"),
    ],
)
def test_edge_config_rejects_bad_values(field: str, value: object) -> None:
    from benchmarks.edge_latency import EdgeConfig

    with pytest.raises(ValueError, match=field):
        EdgeConfig(**{field: value})  # type: ignore[arg-type]
