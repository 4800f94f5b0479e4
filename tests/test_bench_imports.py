"""benchmarks/ imports no framework and no private name: methods come through adapters.registry."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
FILES = sorted(BENCHMARKS.rglob("*.py"))

PROJECT_PUBLIC = {
    "adapters.registry",
    "adapters.torch_pruning",
    "adapters.nni",
    "cut_plugin",
    "cut_plugin.vocabulary",
    "pam_plugin",
}
"""The project's modules benchmarks may import: the packages' public faces."""
THIRD_PARTY = {"torch", "numpy", "tqdm", "matplotlib", "onnxruntime", "sklearn", "mnist1d", "PIL"}
FRAMEWORKS = {"torch_pruning", "nni"}
METHOD_BUILDERS = {
    "CUTImportance",
    "CUTPruner",
    "MTZMerger",
    "PAMMerger",
    "baseline_prune",
    "cut_prune",
    "prune_by_masks",
    "prune_merged",
    "prune_merged_gates",
    "speedup",
}
"""Built through ``adapters.registry.build``, never imported by a benchmark."""


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of every import in ``path``, lazy ones inside functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            found.append((node.lineno, module, [alias.name for alias in node.names]))
    return found


def _problems(path: Path) -> list[str]:
    problems = []
    for line, module, names in _imports(path):
        where = f"{path.name}:{line}: {module}"
        root = module.split(".")[0]
        if module.startswith("."):
            problems.append(f"{where}: relative import (name the module)")
        elif root in FRAMEWORKS:
            problems.append(f"{where}: a framework (go through adapters.registry)")
        elif any(part.startswith("_") for part in module.split(".") if part != "__future__"):
            problems.append(f"{where}: a private module")
        elif root in {"adapters", "cut_plugin", "pam_plugin"}:
            if module not in PROJECT_PUBLIC:
                problems.append(f"{where}: not a public module ({sorted(PROJECT_PUBLIC)})")
        elif root not in {"benchmarks", "__future__"} | THIRD_PARTY | set(sys.stdlib_module_names):
            problems.append(f"{where}: not an allowed module")
        problems += [f"{where}.{n}: a private name" for n in names if n.startswith("_")]
        if root in {"adapters", "cut_plugin", "pam_plugin"}:
            problems += [
                f"{where}.{n}: a method (build it with adapters.registry)"
                for n in names
                if n in METHOD_BUILDERS
            ]
    return problems


def test_every_benchmark_file_is_checked():
    names = {p.name for p in FILES}
    assert {"__main__.py", "cut_suite.py", "pam_suite.py", "latency_scaling.py"} <= names
    assert "speedup.py" not in names  # renamed for what it measures


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_benchmarks_import_only_public_non_framework_names(path: Path):
    assert _problems(path) == []


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_no_benchmark_file_passes_400_lines(path: Path):
    assert len(path.read_text().splitlines()) <= 400


def test_the_checker_catches_each_kind_of_violation(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import torch_pruning as tp\n"
        "from nni.compression.pruning import L1NormPruner\n"
        "from pam_plugin.validation import check_int\n"
        "from cut_plugin.fusion import top_mask\n"
        "from cut_plugin import _private\n"
        "from adapters.torch_pruning import cut_prune, count_macs\n"
        "from . import data\n"
        "import requests\n"
        "def lazy():\n    import nni\n"
    )
    problems = _problems(bad)
    assert len(problems) == 9, problems
    assert sum("framework" in p for p in problems) == 3
    assert not any("count_macs" in p for p in problems)
