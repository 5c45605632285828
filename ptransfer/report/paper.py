"""The paper's own numbers, for the report's comparison column.

Only numbers that can be cited are here. Source: Su et al., "On Transferability
of Prompt Tuning for Natural Language Processing", NAACL 2022, the table of
Spearman correlations (x100) between each transferability indicator and the
measured zero-shot cross-task transfer, averaged over target tasks, on
RoBERTa-large and T5-XXL.
"""

from __future__ import annotations

MODELS = ("RoBERTa-large", "T5-XXL")

# (finding, quantity) -> {paper model: value as printed in the paper}
PAPER = {
    ("indicators", "ON"): {"RoBERTa-large": 49.7, "T5-XXL": 36.9},
    ("indicators", "C_average"): {"RoBERTa-large": 44.7, "T5-XXL": 33.5},
}


def paper_value(finding: str, quantity: str) -> str:
    """'49.7 / 36.9' (RoBERTa-large / T5-XXL), or '' when the paper has no such number."""
    row = PAPER.get((finding, quantity))
    if not row:
        return ""
    return " / ".join(f"{row[m]:.1f}" if m in row else "n/a" for m in MODELS)
