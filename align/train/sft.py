"""SFT stage: a thin typed wrapper over TRL's SFTTrainer."""

from __future__ import annotations

import re
from typing import Any

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from align.chat import fit
from align.config import SFTStageConfig
from align.train.common import (
    EpochSeededData,
    finish_tracking,
    peft_config,
    save_merged,
    train_resumable,
    trainer_kwargs,
)


class SeededSFTTrainer(EpochSeededData, SFTTrainer):
    """TRL's SFTTrainer whose length-grouped batches depend on the seed and epoch only, so resuming is exact."""


def train_sft(
    model,
    tokenizer,
    dataset: Dataset,
    cfg: SFTStageConfig,
    output_dir: str,
    *,
    seed: int,
    report_to: str = "none",
    run_name: str = "sft",
) -> dict[str, float]:
    """Fine-tune on a ``messages`` dataset and save a loadable model to ``output_dir``; returns metrics."""
    if "messages" not in dataset.column_names and not {"prompt", "completion"} <= set(dataset.column_names):
        raise ValueError(
            f"SFT dataset needs a 'messages' column or 'prompt' and 'completion'; it has {dataset.column_names}"
        )
    if "messages" in dataset.column_names:
        dataset = Dataset.from_list(to_template(dataset, tokenizer, cfg.assistant_only_loss))
    prompt_completion = "messages" not in dataset.column_names
    args = SFTConfig(
        **trainer_kwargs(cfg, output_dir, seed, report_to, run_name),
        # prompt/completion rows are trained on the completion only; messages rows on assistant turns
        assistant_only_loss=cfg.assistant_only_loss and not prompt_completion,
        completion_only_loss=True if prompt_completion else None,
        # Batches of similar length pad less: about 2x faster on the tiny world's mixed-length corpus.
        train_sampling_strategy="group_by_length",
    )
    trainer = SeededSFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config(cfg.lora),
    )
    _, metrics = train_resumable(trainer, output_dir)  # from the newest valid checkpoint, if an attempt died
    save_merged(trainer, tokenizer, output_dir)
    finish_tracking(report_to)
    return metrics


_GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


def to_template(dataset: Dataset, tokenizer, assistant_only: bool = True) -> list[dict[str, Any]]:
    """``messages`` rows fitted to the chat template, or prompt/completion rows where it cannot mark assistant turns.

    TRL's assistant-only loss needs ``{% generation %}`` blocks in the template, which few shipped templates have
    (Qwen's, Llama 3's and Mistral's do not). Without them each assistant turn becomes a prompt/completion row,
    the loss on its completion only: the same tokens are trained, and never the red-team prompts.
    """
    rows = [{"messages": fit(row["messages"], tokenizer)} for row in dataset]
    if not assistant_only or _GENERATION_BLOCK.search(str(tokenizer.chat_template)):
        return rows
    out = []
    for row in rows:
        messages = row["messages"]
        for i, message in enumerate(messages):
            if message["role"] == "assistant" and i > 0:
                out.append({"prompt": messages[:i], "completion": [message]})
    return out
