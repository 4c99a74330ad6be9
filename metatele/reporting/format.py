"""How numbers are written in Markdown tables: three significant digits, "—" for an undefined statistic
(NaN never reaches a report), and one formatter for a value with its confidence interval."""
from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["UNDEFINED", "fmt", "ci", "markdown_table"]

UNDEFINED = "—"


def fmt(x: float | None, spec: str = ".3g", inf: str = "never") -> str:
    """`x` in format `spec`; "" for a missing value, "—" for NaN or −inf, `inf` for +inf (e.g. the steps to
    reach a loss that is never reached)."""
    if x is None:
        return ""
    if x == math.inf:
        return inf
    return f"{x:{spec}}" if math.isfinite(x) else UNDEFINED


def ci(mean: float, lo: float, hi: float, spec: str = ".3g", undefined: str = UNDEFINED) -> str:
    """"mean [lo, hi]"; just "mean" when the interval is undefined (fewer than two finite values), and
    `undefined` when the mean itself is (e.g. "diverged")."""
    if not math.isfinite(mean):
        return undefined
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{mean:{spec}}"
    return f"{mean:{spec}} [{lo:{spec}}, {hi:{spec}}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (one line per row, ending in a newline) from already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"
