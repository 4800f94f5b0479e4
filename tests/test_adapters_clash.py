"""``import adapters`` refuses to run beside AdapterHub's PyPI package of the same name."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def import_adapters(*path: Path) -> subprocess.CompletedProcess[str]:
    """``import adapters`` in a fresh interpreter with ``path`` in front of this checkout."""
    code = "import sys; sys.path[:0] = sys.argv[1:]; import adapters; print(adapters.__file__)"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, path), str(ROOT)],
        cwd=path[0] if path else ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def fake_adapterhub_metadata(folder: Path, version: str = "1.1.0") -> None:
    """An installed-looking ``adapters-<version>.dist-info`` (the metadata only, no package)."""
    info = folder / f"adapters-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: adapters\nVersion: {version}\n")


def check_clash_error(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode != 0, f"import succeeded beside AdapterHub: {result.stdout}"
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("ImportError")
    assert "cut-pam" in error and "AdapterHub" in error  # both packages named
    assert "pip uninstall adapters" in error and "virtual environments" in error  # ways out


def test_import_works_without_adapterhub(tmp_path: Path) -> None:
    result = import_adapters(tmp_path)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == ROOT / "adapters" / "__init__.py"


def test_adapterhub_distribution_is_an_import_error(tmp_path: Path) -> None:
    fake_adapterhub_metadata(tmp_path)
    result = import_adapters(tmp_path)
    check_clash_error(result)
    assert "'adapters' 1.1.0" in result.stderr


def test_adapterhub_files_merged_into_the_folder_are_an_import_error(tmp_path: Path) -> None:
    """Metadata gone, files left: a copy of this package holding AdapterHub's ``model_mixin.py``."""
    shutil.copytree(ROOT / "adapters", tmp_path / "adapters")
    (tmp_path / "adapters" / "model_mixin.py").write_text("# AdapterHub\n")
    result = import_adapters(tmp_path)
    check_clash_error(result)
    assert "model_mixin.py" in result.stderr


def test_the_check_is_cheap_and_framework_free(tmp_path: Path) -> None:
    code = (
        "import sys, adapters; print(sorted({'torch', 'torch_pruning', 'nni'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("marker", ["heads", "composition.py"])
def test_adapterhub_clash_reads_the_folder(tmp_path: Path, marker: str) -> None:
    import adapters

    assert adapters.adapterhub_clash(tmp_path) is None
    if marker == "heads":
        (tmp_path / marker).mkdir()
    else:
        (tmp_path / marker).touch()
    reason = adapters.adapterhub_clash(tmp_path)
    assert reason is not None and marker in reason
