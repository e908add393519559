"""Model cards: written atomically as README.md, read back by huggingface_hub's ModelCard.load, one per model
directory a recipe run publishes, and never a reason for the pipeline to redo a stage."""

import json
import os
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from safetensors.torch import save_file

from align.config import RecipeConfig, load_config
from align.constitution import load_constitution
from align.evaluation.cards import write_model_card, write_run_cards
from align.models import write_pointer
from align.pipeline import Run
from align.stages.context import Result


def test_card_loads_with_front_matter_and_eval_table(tmp_path):
    constitution = load_constitution("constitutions/harmless.yaml")
    (tmp_path / "README.md").write_text("old card\n")
    path = write_model_card(
        tmp_path,
        model_name="cai-dpo",
        base_model="Qwen/Qwen2.5-0.5B-Instruct",
        datasets=["Anthropic/hh-rlhf", "walledai/XSTest"],
        constitution=constitution,
        stages=[("sft", "supervised fine-tuning"), ("critique_revise", "SL-CAI revisions"), ("dpo", "DPO")],
        eval_metrics={
            "base": {"harmful_refusal": 0.0, "benign_helpful": 1.0, "n_harmful": 40},
            "dpo": {"harmful_refusal": 0.857, "benign_helpful": 0.95, "n_harmful": 40},
        },
        tags=["dpo"],
    )
    assert path == tmp_path / "README.md"
    assert sorted(os.listdir(tmp_path)) == ["README.md"]  # no temp file left behind
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["base_model"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert data["datasets"] == ["Anthropic/hh-rlhf", "walledai/XSTest"]
    assert data["tags"][0] == "constitutional-ai" and "dpo" in data["tags"]
    assert "license" not in data
    text = card.text
    assert constitution.identity in text
    assert all(f"`{p.id}`" in text for p in constitution.principles)
    assert "| `critique_revise` | SL-CAI revisions |" in text
    table = [line for line in text.splitlines() if line.startswith("| base") or line.startswith("| dpo")]
    assert table == ["| base | 0 | 1 | 40 |", "| dpo | 0.857 | 0.95 | 40 |"]
    assert "| model | harmful_refusal | benign_helpful | n_harmful |" in text


def test_minimal_card(tmp_path):
    card = ModelCard.load(write_model_card(tmp_path, model_name="m"))
    assert card.data.to_dict()["tags"] == ["constitutional-ai", "align"]
    assert "base_model" not in card.data.to_dict()
    assert "## Evaluation" not in card.text


# ---------------------------------------------------------------------------------------------------
# The recipe's models: one card per published model directory, written after the eval stage

HARMLESS = load_constitution("constitutions/harmless.yaml")
EVALS = {
    "base": {"harmful_refusal": 0.1, "benign_helpful": 1.0, "n_harmful": 10.0},
    "sft_cai": {"harmful_refusal": 0.6, "benign_helpful": 0.9, "n_harmful": 10.0},
    "dpo": {"harmful_refusal": 0.8, "benign_helpful": 0.95, "n_harmful": 10.0},
}


def publish(run: Run, stage: str, *, weights: bool = True, pointer: str | None = None, extra: dict | None = None):
    """Run ``stage`` through the real pipeline (publication, manifest with recorded file sizes); returns whether
    its body ran (False: skipped as done with the same inputs)."""
    with run.stage(stage, config={"stage": stage}, inputs={}) as handle:
        ran = not handle.done
        if ran:
            if weights:
                save_file({"w": torch.zeros(4)}, str(handle.work_dir / "model.safetensors"))
            if pointer is not None:
                write_pointer(handle.work_dir, pointer)
            for name, text in (extra or {}).items():
                (handle.work_dir / name).write_text(text)
            if stage == "eval":
                (handle.work_dir / "metrics.json").write_text(json.dumps(EVALS))
            handle.record(Result({"steps": 1} if stage != "eval" else EVALS))
    return ran


def recipe_config(tmp_path: Path, text: str) -> RecipeConfig:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return load_config(RecipeConfig, path)


def test_every_published_model_gets_a_card_with_its_eval_rows(tmp_path):
    config = recipe_config(
        tmp_path,
        "run_name: demo\nbase_model: Qwen/Qwen2.5-0.5B-Instruct\n"
        "critique_revise: {red_team_prompts: {path: Anthropic/hh-rlhf, data_dir: red-team-attempts}}\n"
        f"eval: {{over_refusal: {tmp_path / 'xstest.csv'}}}\n",
    )
    run = Run(tmp_path / "runs" / "demo", order=["sft", "critique_revise", "sft_cai", "preferences", "dpo", "eval"])
    publish(run, "sft", weights=False, pointer="Qwen/Qwen2.5-0.5B-Instruct")  # stands for the hub model
    publish(run, "critique_revise", weights=False)
    publish(run, "sft_cai")
    publish(run, "preferences", weights=False)
    publish(run, "dpo")
    publish(run, "eval", weights=False)

    written = write_run_cards(run.root, config, HARMLESS)
    assert written == [run.root / "sft_cai" / "README.md", run.root / "dpo" / "README.md"]
    assert not (run.root / "sft" / "README.md").exists()  # no weights of its own: no card
    card = ModelCard.load(run.root / "dpo" / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "Qwen/Qwen2.5-0.5B-Instruct" and data["model_name"] == "demo-dpo"
    assert data["datasets"] == ["Anthropic/hh-rlhf"]  # hub sources only, not local files
    assert data["tags"] == ["constitutional-ai", "align", "dpo"] and "license" not in data
    lines = card.text.splitlines()
    assert "| model | harmful_refusal | benign_helpful | n_harmful |" in lines
    assert [line for line in lines if line.startswith(("| base |", "| dpo |", "| sft_cai |"))] == [
        "| base | 0.1 | 1 | 10 |",
        "| dpo | 0.8 | 0.95 | 10 |",
    ]
    made = [line.split("`")[1] for line in lines if line.startswith("| `")]
    assert made == ["sft", "critique_revise", "sft_cai", "preferences", "dpo"]  # no reward stage ran
    assert "| `sft` | supervised fine-tuning of `Qwen/Qwen2.5-0.5B-Instruct` |" in lines
    assert HARMLESS.identity in card.text
    sl_cai = ModelCard.load(run.root / "sft_cai" / "README.md").text
    assert "| sft_cai | 0.6 | 0.9 | 10 |" in sl_cai and "| dpo |" not in sl_cai


def test_a_world_trained_base_model_gets_a_card_without_a_hub_base(tmp_path):
    config = recipe_config(tmp_path, "run_name: tiny\nbase_model: tiny:base\nworld: {kind: tiny}\n")
    run = Run(tmp_path / "runs" / "tiny", order=["sft"])
    publish(run, "sft")
    (path,) = write_run_cards(run.root, config, HARMLESS)
    card = ModelCard.load(path)
    assert "base_model" not in card.data.to_dict() and "datasets" not in card.data.to_dict()
    assert "| `sft` | the tiny world's own base model, trained from scratch |" in card.text
    assert "## Evaluation" not in card.text  # no eval stage finished yet


def test_writing_cards_never_makes_a_rerun_redo_a_stage(tmp_path):
    """The pipeline records a stage's file sizes and redoes a stage whose files changed. A card is written after
    the eval stage, into a directory already published, and may replace a README.md the stage wrote itself
    (PEFT's save_pretrained writes one): the next run must still skip the stage."""
    config = recipe_config(tmp_path, "run_name: r\nbase_model: tiny:base\nworld: {kind: tiny}\n")
    run = Run(tmp_path / "runs" / "r", order=["sft", "dpo", "eval"])
    assert publish(run, "sft")
    assert publish(run, "dpo", extra={"README.md": "a trainer's own card\n"})
    assert publish(run, "eval", weights=False)
    before = {s: json.loads((run.root / s / "manifest.json").read_text())["output_id"] for s in ("sft", "dpo")}
    assert len(write_run_cards(run.root, config, HARMLESS)) == 2
    assert "a trainer's own card" not in (run.root / "dpo" / "README.md").read_text()

    again = Run(tmp_path / "runs" / "r", order=["sft", "dpo", "eval"])
    assert [publish(again, s) for s in ("sft", "dpo")] == [False, False]
    after = {s: json.loads((run.root / s / "manifest.json").read_text())["output_id"] for s in ("sft", "dpo")}
    assert after == before
