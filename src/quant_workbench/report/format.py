"""The cells every report section writes: percentages, points, milliseconds, the missing-value dash, and
Markdown tables (one writer: escaped pipes, one line per cell)."""

from __future__ import annotations

import math
from collections.abc import Sequence

DASH = "—"


def pct(x: float | None, unit: str = "", missing: str = DASH) -> str:
    """A fraction as a percentage with two decimals (0.8312 -> "83.12"); `missing` for None, NaN or inf."""
    return missing if x is None or not math.isfinite(x) else f"{100.0 * x:.2f}{unit}"


def points(x: float | None) -> str:
    """A difference of fractions in signed percentage points (-0.0031 -> "-0.31")."""
    return DASH if x is None or not math.isfinite(x) else f"{100.0 * x:+.2f}"


def ms(x: float | None, unit: str = "") -> str:
    return DASH if x is None else f"{x:.2f}{unit}"


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def cell(text: str) -> str:
    """Make text safe inside a Markdown table cell: no line breaks, escaped pipes."""
    return one_line(text).replace("\\", "\\\\").replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> list[str]:
    right = right or [False] * len(header)
    sep = ["---:" if r else "---" for r in right]
    out = ["| " + " | ".join(cell(h) for h in header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return out
