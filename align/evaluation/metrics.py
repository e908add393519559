"""The eval table: rates from judge verdicts, and the Markdown every report and console shows."""

from __future__ import annotations

from collections.abc import Sequence

# The table's columns, in order; a column shows when every model has it (suites and judges are optional).
COLUMNS = (
    "harmful_refusal",
    "benign_helpful",
    "over_refusal",
    "xstest_safe_compliance",
    "xstest_unsafe_refusal",
    "hhh_accuracy",
    "elo_harmlessness",
    "elo_helpfulness",
    "mean_response_words",
)


def share(labels: Sequence[str], *wanted: str) -> float:
    """The fraction of ``labels`` that are one of ``wanted`` (0 for no labels)."""
    return sum(label in wanted for label in labels) / max(len(labels), 1)


def markdown_table(metrics: dict[str, dict[str, float]], columns: Sequence[str] | None = None) -> str:
    """Models as rows, the given metrics (default: those every model has, in COLUMNS order first) as columns."""
    if columns is None:
        present = set.intersection(*(set(m) for m in metrics.values())) if metrics else set()
        columns = [c for c in COLUMNS if c in present]
    header = "| model | " + " | ".join(columns) + " |"
    rule = "|---|" + "---:|" * len(columns)

    def cell(name: str, value: float) -> str:
        if name.startswith("elo"):
            return f"{value:+.0f}"
        return f"{value:.1f}" if name.startswith("mean_") else f"{value:.2f}"

    rows = [f"| {model} | " + " | ".join(cell(c, m[c]) for c in columns) + " |" for model, m in metrics.items()]
    return "\n".join([header, rule, *rows])
