"""Thin adapters of cut_plugin / pam_plugin to Torch-Pruning and NNI.

Import the submodule you need (``adapters.torch_pruning``, ``adapters.nni``,
``adapters.registry``); this package imports no framework by itself.

The top-level name ``adapters`` is also that of AdapterHub's PyPI package
(``pip install adapters``). Installed into one environment, the two share one
``site-packages/adapters`` folder: whichever was installed last owns
``__init__.py``, and ``pip uninstall adapters`` deletes this project's files
too. Importing this package therefore fails with an ``ImportError`` naming the
way out when AdapterHub's package is present (:func:`adapterhub_clash`).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

__all__ = ["ADAPTERHUB_MARKERS", "adapterhub_clash"]

ADAPTERHUB_MARKERS: tuple[str, ...] = ("model_mixin.py", "composition.py", "heads", "loading.py")
"""Entries of AdapterHub's ``adapters`` folder that this package never has (present in its
releases 0.1 to 1.x)."""


def adapterhub_clash(folder: Path | None = None) -> str | None:
    """Why AdapterHub's ``adapters`` package is in this environment, or ``None`` when it is not.

    Cheap and framework-free: one look-up of the installed distribution named
    ``adapters`` (this project's distribution is ``cut-pam``; on PyPI the name
    ``adapters`` is AdapterHub's) and a few file checks in ``folder`` (this
    package's folder by default), which catch AdapterHub's files merged into it
    even where its metadata is gone.
    """
    try:
        found = importlib.metadata.distribution("adapters")
    except importlib.metadata.PackageNotFoundError:
        pass
    else:
        return f"the distribution 'adapters' {found.version} (AdapterHub) is installed"
    here = Path(__file__).resolve().parent if folder is None else folder
    merged = [name for name in ADAPTERHUB_MARKERS if (here / name).exists()]
    if merged:
        return f"{here} holds AdapterHub's files {merged}"
    return None


def _check_environment() -> None:
    reason = adapterhub_clash()
    if reason is not None:
        raise ImportError(
            "cut-pam's package 'adapters' clashes with AdapterHub's PyPI package 'adapters' "
            f"({reason}): both install a top-level folder named 'adapters', so one overwrites the "
            "other's __init__.py and `pip uninstall adapters` deletes cut-pam's files too. "
            "Way out: use separate virtual environments for cut-pam and AdapterHub, or, if you "
            "do not need AdapterHub here, run `pip uninstall adapters` and then reinstall cut-pam "
            "(`pip install --force-reinstall --no-deps cut-pam`, or `pip install -e .` in a checkout)."
        )


_check_environment()
