"""Model cards: written atomically as README.md and read back by huggingface_hub's ModelCard.load."""

import os

from huggingface_hub import ModelCard

from align.constitution import load_constitution
from align.evaluation.cards import write_model_card


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
