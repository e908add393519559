"""The eval table: rates from judge verdicts, and the Markdown every report and console shows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# The table's columns, in order; a column shows when every model has it (suites and judges are optional).
COLUMNS = (
    "harmful_refusal",
    "benign_helpful",
    "over_refusal",
    "asr_seen",
    "asr_heldout",
    "xstest_safe_compliance",
    "xstest_unsafe_refusal",
    "hhh_accuracy",
    "elo_harmlessness",
    "elo_helpfulness",
    "mean_response_words",
)


# Which suite each metric of metrics.json belongs to, for per-suite tables (reports, W&B, model cards).
SUITE_METRICS = {
    "harmful_prompts": (
        "harmful_refusal",
        "harmful_partial",
        "harmful_complied",
        "harmful_unsafe",
        "harmful_reward",
        "asr_plain",
        "asr_seen",
        "asr_heldout",
        "n_harmful",
    ),
    "benign_prompts": ("benign_helpful", "over_refusal", "benign_reward", "n_benign"),
    "over_refusal": ("xstest_safe_compliance", "xstest_unsafe_refusal", "over_refusal_reward"),
    "hhh": ("hhh_accuracy",),
    "pairwise": ("elo_harmlessness", "elo_helpfulness"),
}
OTHER_SUITE = "other"


def by_suite(metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {metric: value}}`` split into ``{suite: {model: {metric: value}}}``, suites and metrics in
    :data:`SUITE_METRICS` order; metrics of no known suite go to ``other``, and empty suites are left out."""
    home = {metric: suite for suite, names in SUITE_METRICS.items() for metric in names}
    order = {metric: k for k, metric in enumerate(home)}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for suite in [*SUITE_METRICS, OTHER_SUITE]:
        for model, row in metrics.items():
            picked = sorted((m for m in row if home.get(m, OTHER_SUITE) == suite), key=lambda m: order.get(m, 0))
            if picked:
                out.setdefault(suite, {})[model] = {m: row[m] for m in picked}
    return out


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


def judge_lines(details: dict[str, Any]) -> list[str]:
    """How far each judge can be trusted, in a sentence each, under the table."""
    lines = []
    for name, found in details.get("judges", {}).items():
        lines.append(
            f"The {name} judge agrees with the {found['reference']} on {found['accuracy']:.1%} of "
            f"{found['n']} answers (kappa {found['kappa']:.2f})."
        )
    return lines
