"""SFT and DPO wrappers on a tiny random model: weights change, LoRA merges, output loads back."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from align.config import DPOStageConfig, LoraSettings, SFTStageConfig
from align.tiny.model import build_model, build_tokenizer
from align.train.dpo import train_dpo
from align.train.sft import train_sft

TEXTS = ["How do I fix a bike?", "Sure. To fix it, first look, then mend.", "I can't help you steal that."]


def tiny():
    tok = build_tokenizer(TEXTS, 300)
    model = build_model(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    return model, tok


def messages(n=8):
    return Dataset.from_list(
        [{"messages": [{"role": "user", "content": TEXTS[0]}, {"role": "assistant", "content": TEXTS[1]}]}] * n
    )


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sft_changes_weights_and_saves_loadable_model(tmp_path, lora):
    model, tok = tiny()
    before = snapshot(model)
    cfg = SFTStageConfig(
        learning_rate=1e-2, max_steps=4, per_device_train_batch_size=4, logging_steps=1, lora=LoraSettings(enabled=lora)
    )
    metrics = train_sft(model, tok, messages(), cfg, str(tmp_path), seed=0)
    assert metrics["steps"] == 4 and metrics["train_loss"] > 0
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    after = loaded.state_dict()
    assert set(after) == set(before)  # LoRA is merged: the saved model is a plain model
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "model.safetensors").exists()


def test_sft_rejects_dataset_without_messages(tmp_path):
    model, tok = tiny()
    with pytest.raises(ValueError, match="needs a 'messages' column"):
        train_sft(model, tok, Dataset.from_list([{"text": "x"}]), SFTStageConfig(), str(tmp_path), seed=0)


def test_dpo_moves_policy_toward_chosen(tmp_path):
    model, tok = tiny()
    before = snapshot(model)
    pairs = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": TEXTS[0]}],
                "chosen": [{"role": "assistant", "content": TEXTS[1]}],
                "rejected": [{"role": "assistant", "content": TEXTS[2]}],
            }
        ]
        * 8
    )
    cfg = DPOStageConfig(learning_rate=1e-2, max_steps=4, per_device_train_batch_size=4, logging_steps=1)
    metrics = train_dpo(model, tok, pairs, cfg, str(tmp_path), seed=0)
    assert metrics["steps"] == 4
    after = AutoModelForCausalLM.from_pretrained(tmp_path).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_dpo_rejects_missing_columns_and_empty_data(tmp_path):
    model, tok = tiny()
    with pytest.raises(ValueError, match=r"missing columns \['rejected'\]"):
        train_dpo(
            model, tok, Dataset.from_list([{"prompt": "a", "chosen": "b"}]), DPOStageConfig(), str(tmp_path), seed=0
        )
    empty = Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []})
    with pytest.raises(ValueError, match="no preference pairs"):
        train_dpo(model, tok, empty, DPOStageConfig(), str(tmp_path), seed=0)


@pytest.mark.parametrize("on", [False, True])
def test_checkpointing_follows_the_config(on, tmp_path):
    """TRL's configs switch activation checkpointing on by default; ours must say what the config says."""
    from trl import DPOConfig, SFTConfig

    from align.train.common import trainer_kwargs

    for config_cls, stage_cls in ((SFTConfig, SFTStageConfig), (DPOConfig, DPOStageConfig)):
        kwargs = trainer_kwargs(stage_cls(gradient_checkpointing=on), str(tmp_path), 0, "none", "x")
        assert config_cls(**kwargs).gradient_checkpointing is on
