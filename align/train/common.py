"""What every TRL-backed stage shares: turning our typed settings into TRL's config kwargs and LoRA."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from align.config import LoraSettings, TrainSettings


def trainer_kwargs(cfg: TrainSettings, output_dir: str, seed: int, report_to: str, run_name: str) -> dict[str, Any]:
    """Keyword arguments common to SFTConfig and DPOConfig.

    bf16 is used on a GPU that supports it and never on CPU; checkpoints are safetensors (the default).
    """
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return dict(
        output_dir=output_dir,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_length=cfg.max_length,
        warmup_steps=cfg.warmup_ratio,  # transformers 5 reads a float in [0, 1) as a ratio
        lr_scheduler_type=cfg.lr_scheduler_type,
        weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps,
        # TRL's configs turn checkpointing on by default; always say which, under the non-deprecated name.
        # (Left unset it was silently on: recomputing every forward for no memory need on small models.)
        activation_checkpointing=cfg.gradient_checkpointing,
        bf16=bf16,
        seed=seed,
        report_to=[] if report_to == "none" else [report_to],
        run_name=run_name,
        save_strategy="no",
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def peft_config(lora: LoraSettings, *, task_type: str = "CAUSAL_LM", modules_to_save: list[str] | None = None):
    """LoRA config, or None when LoRA is off.

    ``modules_to_save`` trains and saves whole modules next to the adapters: a new head (a reward model's
    ``score``) starts random, so a low-rank update of it would not be enough.
    """
    if not lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=task_type,
        modules_to_save=modules_to_save,
    )


def save_merged(trainer, tokenizer, output_dir: str) -> None:
    """Save a plain model directory: LoRA adapters are merged so later stages load it like any model.

    The trainer's log history goes next to it (``log_history.json``), so reports can plot the training
    curves of any finished stage without a tracker.
    """
    model = trainer.model
    unwrapped = trainer.accelerator.unwrap_model(model)
    if hasattr(unwrapped, "merge_and_unload"):
        unwrapped = unwrapped.merge_and_unload()
    if trainer.accelerator.is_main_process:
        unwrapped.save_pretrained(output_dir, safe_serialization=True)
        tokenizer.save_pretrained(output_dir)
        history = json.dumps(trainer.state.log_history, indent=1, default=float)
        (Path(output_dir) / "log_history.json").write_text(history + "\n")
    trainer.accelerator.wait_for_everyone()


def finish_tracking(report_to: str) -> None:
    """Close the stage's W&B run so the next stage starts its own (one run per stage, one group per pipeline)."""
    if report_to == "wandb":
        import wandb

        from align.tracking import is_managed

        # A run opened by the pipeline for this stage stays open: the pipeline logs artifacts to it, then closes it.
        if wandb.run is not None and not is_managed(wandb.run):
            wandb.finish()
