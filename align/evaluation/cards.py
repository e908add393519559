"""Hugging Face model cards for the models align publishes.

A card is the model directory's ``README.md``: YAML front matter the Hub reads (``base_model``, ``datasets``,
``tags`` with ``constitutional-ai``), then what a reader needs to trust the model: which constitution it was
aligned to (identity and principle ids, so the exact text can be found), the stages that made it, and its
evaluation table. ``license`` is left out on purpose: only the person publishing can choose it, and the
base model's licence may constrain the choice. Built with ``huggingface_hub``'s ``ModelCard``, so
``ModelCard.load`` reads it back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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
    eval_note: str | None = None,
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
        if eval_note:
            body += [eval_note, ""]
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


# ---------------------------------------------------------------------------------------------------
# The recipe's models

# The chain's model stages, the stages that made each (in order), and each model's row in eval/metrics.json.
MODEL_STAGES = ("sft", "sft_cai", "dpo", "ppo", "grpo", "rloo")
EVAL_NAME = {"sft": "base"}
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors")
EVAL_NOTE = (
    "`base` is the model the chain started from (the `sft` stage). Rates are shares of held-out prompts; "
    "how far each judge behind them can be trusted is stated in the run's eval/table.md and report."
)
_WHAT = {
    "critique_revise": "answers to red-team prompts, critiqued and revised under the constitution (SL-CAI)",
    "sft_cai": "supervised fine-tuning on the revised answers and helpful ones",
    "reward": "a Bradley-Terry reward model trained on the preference pairs",
    "dpo": "DPO on the preference pairs",
    "ppo": "PPO against the reward model",
    "grpo": "GRPO against the reward model",
    "rloo": "RLOO against the reward model",
}


def _manifest(stage_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((stage_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("status") == "done" else {}


def _lineage(stage: str) -> list[str]:
    if stage == "sft":
        return ["sft"]
    made = ["sft", "critique_revise", "sft_cai"]
    if stage == "dpo":
        made += ["preferences", "dpo"]
    elif stage != "sft_cai":
        made += ["preferences", "reward", stage]
    return made


def _describe(stage: str, manifest: dict[str, Any], config) -> str:
    metrics = manifest.get("metrics") if isinstance(manifest.get("metrics"), dict) else {}
    if stage == "sft":
        if config.world is not None and config.base_model == f"{config.world['kind']}:base":
            return f"the {config.world['kind']} world's own base model, trained from scratch"
        return f"supervised fine-tuning of `{config.base_model}`"
    if stage == "preferences":
        mode = (manifest.get("config") or {}).get("mode")
        what = "AI preference labels from the feedback model (RL-CAI)" if mode == "ai_feedback" else None
        return what or "preference pairs: each revision preferred to the answer it revised"
    what = _WHAT.get(stage, stage)
    if stage == "reward" and isinstance(metrics.get("eval_label_accuracy"), (int, float)):
        what += f" (held-out pair accuracy {metrics['eval_label_accuracy']:.3f})"
    return what


def _hub_datasets(config) -> list[str]:
    """The Hugging Face datasets among the run's sources (local files and a world's prompts are not named)."""
    from align.models import is_local, looks_like_path

    found = []
    for source in config.sources().values():
        if source.path.startswith("red_team:"):  # a red-team run's archive, a local folder
            continue
        if source.world() is None and not is_local(source.path) and not looks_like_path(source.path):
            found.append(source.path)
    return list(dict.fromkeys(found))


def write_run_cards(run_dir: str | os.PathLike, config, constitution) -> list[Path]:
    """A model card in every model directory a recipe run published, with the model's rows of the eval table.

    Model directories are the base model the world trained or ``sft.dataset`` fine-tuned, the SL-CAI model and
    each optimiser model; an ``sft`` stage that only stands for a hub model (``model.json``) has no weights of its
    own and gets none. Called after the eval stage; writing a card never redoes a stage (the pipeline leaves
    ``README.md`` out of a stage's recorded files). Returns the cards written.
    """
    from align.models import POINTER, is_local, looks_like_path

    run_dir = Path(run_dir)
    metrics_file = run_dir / "eval" / "metrics.json"
    try:
        evals = json.loads(metrics_file.read_text()) if _manifest(run_dir / "eval") else {}
    except (OSError, ValueError):
        evals = {}
    base_model = config.base_model
    hub_base = base_model if not (is_local(base_model) or looks_like_path(base_model) or ":" in base_model) else None
    written = []
    for stage in MODEL_STAGES:
        stage_dir = run_dir / stage
        manifest = _manifest(stage_dir)
        if not manifest or (stage_dir / POINTER).exists() or not any((stage_dir / w).exists() for w in WEIGHTS):
            continue
        made = [(name, _describe(name, _manifest(run_dir / name), config)) for name in _lineage(stage)]
        name = EVAL_NAME.get(stage, stage)
        rows = {n: evals[n] for n in dict.fromkeys(["base", name]) if isinstance(evals.get(n), dict)}
        written.append(
            write_model_card(
                stage_dir,
                model_name=f"{config.run_name}-{stage}",
                base_model=hub_base,
                datasets=_hub_datasets(config),
                constitution=constitution,
                stages=[(n, what) for n, what in made if _manifest(run_dir / n)],
                eval_metrics=rows or None,
                eval_note=EVAL_NOTE if rows else None,
                tags=[stage],
            )
        )
    return written
