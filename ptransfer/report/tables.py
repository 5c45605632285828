"""Markdown table and number formatting shared by the report writers."""

from __future__ import annotations

import math


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def with_ci(n: dict | None, digits: int = 2) -> str:
    """'0.81 [0.74, 0.88]' from {"mean", "ci"}; 'n/a' without a mean."""
    if not n or n.get("mean") is None:
        return "n/a"
    ci = n.get("ci")
    return f"{n['mean']:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")
