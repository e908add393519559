"""DPO stage: a thin typed wrapper over TRL's DPOTrainer."""

from __future__ import annotations

import copy

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from align.config import DPOStageConfig
from align.train.common import finish_tracking, peft_config, save_merged, train_resumable, trainer_kwargs

REQUIRED = ("prompt", "chosen", "rejected")


def train_dpo(
    model,
    tokenizer,
    dataset: Dataset,
    cfg: DPOStageConfig,
    output_dir: str,
    *,
    seed: int,
    report_to: str = "none",
    run_name: str = "dpo",
) -> dict[str, float]:
    """Optimise the policy on preference pairs; the reference is a frozen copy of the starting model."""
    missing = [c for c in REQUIRED if c not in dataset.column_names]
    if missing:
        raise ValueError(f"DPO dataset is missing columns {missing}; it has {dataset.column_names}")
    if len(dataset) == 0:
        raise ValueError("DPO dataset has no preference pairs (every revision equalled its original response?)")
    args = DPOConfig(
        **trainer_kwargs(cfg, output_dir, seed, report_to, run_name),
        beta=cfg.beta,
        loss_type=[cfg.loss_type],
    )
    lora = peft_config(cfg.lora)
    # The frozen reference is the starting policy. A copy in memory works for models built in code too
    # (TRL would reload it by name); with LoRA, TRL uses the base model with the adapter disabled instead.
    ref_model = None if lora is not None else copy.deepcopy(model).eval()
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
    )
    _, metrics = train_resumable(trainer, output_dir)  # from the newest valid checkpoint, if an attempt died
    save_merged(trainer, tokenizer, output_dir)
    finish_tracking(report_to)
    return metrics
