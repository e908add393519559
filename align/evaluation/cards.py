"""Hugging Face model cards for the models align publishes.

A card is the model directory's ``README.md``: YAML front matter the Hub reads (``base_model``, ``datasets``,
``tags`` with ``constitutional-ai``), then what a reader needs to trust the model: which constitution it was
aligned to (identity and principle ids, so the exact text can be found), the stages that made it, and its
evaluation table. ``license`` is left out on purpose: only the person publishing can choose it, and the
base model's licence may constrain the choice. Built with ``huggingface_hub``'s ``ModelCard``, so
``ModelCard.load`` reads it back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from align.data import write_text_atomic

TAGS = ("constitutional-ai", "align")


def _number(metric: str, value: float) -> str:
    """Counts as integers, anything else to three decimals without trailing zeros (0.857, 15.1, 1)."""
    if metric == "n" or metric.startswith("n_"):
        return str(int(value))
    return f"{value:.3f}".rstrip("0").rstrip(".")


def eval_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """``{model: {metric: value}}`` as a Markdown table, one row per model, metrics in first-seen order."""
    columns: list[str] = []
    for values in metrics.values():
        columns += [c for c in values if c not in columns]
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for model, values in metrics.items():
        cells = [_number(c, values[c]) if c in values else "" for c in columns]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def model_card(
    *,
    model_name: str,
    base_model: str | None = None,
    datasets: Sequence[str] = (),
    constitution=None,
    stages: Sequence[tuple[str, str]] = (),
    eval_metrics: Mapping[str, Mapping[str, float]] | None = None,
    tags: Sequence[str] = (),
) -> ModelCard:
    """The card's front matter and body; ``stages`` are (stage name, what it did) in the order they ran."""
    data = ModelCardData(
        base_model=base_model,
        datasets=list(datasets) or None,
        tags=list(dict.fromkeys([*TAGS, *tags])),
        library_name="transformers",
        model_name=model_name,
    )
    body = [f"# {model_name}", ""]
    origin = f"from `{base_model}` " if base_model else ""
    body += [f"Aligned {origin}with align, by Constitutional AI (Bai et al. 2022).", ""]
    if constitution is not None:
        ids = ", ".join(f"`{p.id}`" for p in constitution.principles)
        body += ["## Constitution", "", f"`{constitution.identity}`", ""]
        if constitution.description:
            body += [constitution.description.strip(), ""]
        body += [f"Principles ({len(constitution.principles)}): {ids}.", ""]
    if stages:
        body += ["## How it was made", "", "| stage | what it did |", "|---|---|"]
        body += [f"| `{name}` | {what} |" for name, what in stages]
        body.append("")
    if eval_metrics:
        body += ["## Evaluation", "", eval_table(eval_metrics), ""]
    body += [
        "## License",
        "",
        "Not set by align: add `license:` to the front matter above, in keeping with the base model's licence.",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


def write_model_card(model_dir: str | os.PathLike, **card) -> Path:
    """Write :func:`model_card` (same keyword arguments) to ``model_dir/README.md`` atomically; returns the path."""
    path = Path(model_dir) / "README.md"
    write_text_atomic(path, str(model_card(**card)))
    return path
