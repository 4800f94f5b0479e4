"""The one vocabulary: its checks and coercions, and that no package keeps a second copy."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import pam_plugin.validation
from cut_plugin import vocabulary
from cut_plugin.vocabulary import (
    as_example_inputs,
    check_batch,
    check_choice,
    check_int,
    check_number,
    check_task_mapping,
    check_tasks,
    model_device_dtype,
    move_to,
)

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cut_plugin", "pam_plugin", "adapters", "benchmarks")
# Names only the vocabulary (or the training loop) may define.
VOCABULARY_NAMES = {
    "Loss", "check_tasks", "check_number", "check_int", "check_choice", "check_task_mapping",
    "model_device_dtype", "network_dtype", "as_example_inputs", "move_to",
}  # fmt: skip
# Files another change is rewriting; each entry names what it still defines (see the item 3).
PENDING: dict[str, set[str]] = {}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_cut_plugin_never_imports_pam_plugin_adapters_or_frameworks() -> None:
    """Imports point one way: pam_plugin may use cut_plugin, never the reverse (read from the source)."""
    for path in _modules("cut_plugin"):
        imported = _imported(ast.parse(path.read_text(), filename=str(path)))
        forbidden = imported & {"pam_plugin", "adapters", "benchmarks", "torch_pruning", "nni"}
        assert not forbidden, f"{path.relative_to(ROOT)} imports {sorted(forbidden)}"


def test_pam_plugin_imports_cut_plugin_but_no_adapter() -> None:
    imported = set().union(*(_imported(ast.parse(p.read_text())) for p in _modules("pam_plugin")))
    assert "cut_plugin" in imported
    assert not imported & {"adapters", "benchmarks", "torch_pruning", "nni"}


def _defined(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_no_package_redefines_the_vocabulary() -> None:
    """One of each: a task check, an option check, a Loss alias, a device/dtype helper."""
    for package in PACKAGES:
        for path in _modules(package):
            relative = path.relative_to(ROOT).as_posix()
            if relative == "cut_plugin/vocabulary.py":
                continue
            again = _defined(ast.parse(path.read_text())) & VOCABULARY_NAMES
            again -= PENDING.get(relative, set())
            assert not again, (
                f"{relative} defines {sorted(again)} again: import cut_plugin.vocabulary"
            )


def test_pam_validation_re_exports_the_same_objects() -> None:
    for name in pam_plugin.validation.__all__:
        assert getattr(pam_plugin.validation, name) is getattr(vocabulary, name)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: check_number("lr", "x"), TypeError, r"lr must be a float, got 'x'"),
        (lambda: check_number("lr", True), TypeError, "lr must be a float"),
        (lambda: check_number("lr", 0.0, low=0.0, low_open=True), ValueError, r"\(0.0, inf\]"),
        (lambda: check_number("p", float("nan"), high=1.0), ValueError, "p must be in"),
        (lambda: check_int("steps", 1.5), TypeError, "steps must be an int >= 1"),
        (lambda: check_int("steps", -1, low=0), ValueError, "steps must be an int >= 0, got -1"),
        (lambda: check_choice("rule", "nope", ("vote", "mean")), ValueError, r"\['vote', 'mean'\]"),
        (lambda: check_tasks("a"), TypeError, r"use \['a'\]"),
        (lambda: check_tasks(["a", "a"]), ValueError, "more than once"),
        (lambda: check_tasks(["z"], ["a"]), ValueError, r"unknown task\(s\) \['z'\]"),
        (lambda: check_tasks([1]), TypeError, "must hold strings"),
        (lambda: check_task_mapping("labels", [], ["a"]), TypeError, "mapping"),
        (lambda: check_task_mapping("labels", {"b": 1}, ["a"]), ValueError, "no entry.*'a'.*'b'"),
        (lambda: as_example_inputs(()), TypeError, "non-empty tuple"),
        (lambda: as_example_inputs("x"), TypeError, "example_inputs"),
        (lambda: as_example_inputs((torch.ones(1), 2), tensors_only=True), TypeError, r"\[1\]"),
        (lambda: check_batch(torch.ones(2), 3), TypeError, "batch 3 must be a pair"),
        (lambda: check_batch((torch.ones(2), [1]), 0), TypeError, "targets must be a dict"),
    ],
)
def test_bad_values_raise_naming_the_value(call, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        call()


def test_good_values_pass_through() -> None:
    assert check_number("lr", 1) == 1.0 and isinstance(check_number("lr", 1), float)
    assert check_int("steps", 0, low=0) == 0
    assert check_choice("rule", "vote", ("vote",)) == "vote"
    assert check_task_mapping("w", {"b": 2, "a": 1}, ["a", "b"]) == {"a": 1, "b": 2}
    assert check_tasks(("a", "b"), ["a", "b", "c"]) == ["a", "b"]


def test_move_to_casts_floats_only_and_leaves_the_callers_tensors() -> None:
    x, labels = torch.randn(2, 3), torch.tensor([1, 2])
    moved = move_to((x, [labels], "keep"), torch.device("cpu"), torch.float64)
    assert moved[0].dtype == torch.float64 and moved[1][0].dtype == torch.int64
    assert isinstance(moved[1], list) and moved[2] == "keep"
    assert x.dtype == torch.float32


def test_example_inputs_follow_the_model() -> None:
    model = torch.nn.Linear(3, 2).double()
    assert model_device_dtype(model) == (torch.device("cpu"), torch.float64)
    assert model_device_dtype(torch.nn.ReLU()) == (torch.device("cpu"), torch.get_default_dtype())
    x = torch.randn(4, 3)
    (cast,) = as_example_inputs(x, model)
    assert cast.dtype == torch.float64 and x.dtype == torch.float32
    assert as_example_inputs([x]) == (x,)
