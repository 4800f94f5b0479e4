"""Markdown cells and tables shared by the parts' renderers."""

from __future__ import annotations

__all__ = ["number", "percent", "table"]


def percent(value: float | None) -> str:
    """``0.953`` → ``"95.3"``; ``None`` → ``"–"``."""
    return "–" if value is None else f"{100 * value:.1f}"


def number(value: float, unit: str = "") -> str:
    """``1234567`` → ``"1.23M"`` (G, M, k; plain below a thousand)."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}{unit}"
    return f"{value:.0f}{unit}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
