"""Deprecated home of the option checks: they live in :mod:`cut_plugin.vocabulary`.

Kept so that ``from pam_plugin.validation import check_number`` (the benchmarks
until they move) still works; import them from ``cut_plugin.vocabulary``.
"""

from __future__ import annotations

from cut_plugin.vocabulary import check_choice, check_int, check_number, check_task_mapping

__all__ = ["check_choice", "check_int", "check_number", "check_task_mapping"]
