"""Imports point one way: the plugins never import the frameworks or the adapters."""

from __future__ import annotations

import subprocess
import sys

BLOCK = (
    "import sys\nfor name in ('torch_pruning', 'nni', 'adapters'):\n    sys.modules[name] = None\n"
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_cut_plugin_imports_with_frameworks_blocked():
    result = _run(BLOCK + "import cut_plugin\nprint(cut_plugin.select_tasks.__name__)")
    assert result.returncode == 0, result.stderr
    assert "select_tasks" in result.stdout


def test_pam_plugin_imports_with_frameworks_blocked():
    result = _run(BLOCK + "import pam_plugin\nprint(pam_plugin.PAMMerger.__name__)")
    assert result.returncode == 0, result.stderr


def test_torch_pruning_adapter_does_not_import_nni():
    result = _run("import sys, adapters.torch_pruning, cut_plugin\nprint('nni' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
