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


def raw_scores(cross_task: dict) -> list[str]:
    """The matrix's raw scores (mean over seeds ± std; baselines below) and its
    evaluation sizes, as report lines."""
    targets = cross_task["targets"]
    rows = []
    for s in cross_task["sources"]:
        row = [s]
        for t in targets:
            m, sd = cross_task["scores"][s].get(t), cross_task.get("scores_std", {}).get(s, {}).get(t)
            row.append(f"{m:.3f}" + (f" ± {sd:.3f}" if sd else "") if m is not None else "n/a")
        rows.append(row)
    for b, sc in cross_task.get("baselines", {}).items():
        rows.append([f"({b})"] + [sc.get(t) for t in targets])
    md = ["Raw scores (mean over seeds ± std):", "", table(["source \\ target"] + targets, rows), ""]
    if cross_task.get("eval_sizes"):
        md += ["Evaluation examples per target: " +
               ", ".join(f"{t}: {n}" for t, n in cross_task["eval_sizes"].items()) + ".", ""]
    return md
