"""SFT stage: a thin typed wrapper over TRL's SFTTrainer."""

from __future__ import annotations

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

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
