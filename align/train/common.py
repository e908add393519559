"""What every TRL-backed stage shares: typed settings to TRL kwargs, LoRA, and crash-safe checkpoints.

Checkpoints: the Trainer writes ``<output_dir>/checkpoints/checkpoint-N`` every ``save_steps`` steps (model,
optimiser, scheduler, RNG states, and ``trainer_state.json``, which holds the data position), and
:func:`train_resumable` restarts from the newest *valid* one. The Trainer writes a checkpoint file by file,
so a kill mid-save leaves a partial directory; :func:`checkpoint_problem` detects that (a completion marker
written after the save, plus cheap structural checks of every file), and such a checkpoint is skipped with a
warning and deleted, never loaded. The pipeline keeps ``checkpoints/`` of a dead stage for its next attempt.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from align.config import LoraSettings, TrainSettings
from align.faults import fault_point, stage_of
from align.files import write_text_atomic
from align.integrity import safetensors_problem, torch_file_problem
from align.train.errors import TrainingDiverged

CHECKPOINTS = "checkpoints"
COMPLETE = ".align_complete"  # written into checkpoint-N once the Trainer has finished saving it
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def trainer_kwargs(cfg: TrainSettings, output_dir: str, seed: int, report_to: str, run_name: str) -> dict[str, Any]:
    """Keyword arguments common to SFTConfig and DPOConfig.

    bf16 is used on a GPU that supports it and never on CPU; checkpoints are safetensors (the default) and go to
    ``<output_dir>/checkpoints/`` (the final model is saved to ``output_dir`` itself by :func:`save_merged`).
    """
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    saving = (
        dict(save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit)
        if cfg.save_steps > 0
        else dict(save_strategy="no")
    )
    return dict(
        output_dir=str(Path(output_dir) / CHECKPOINTS),
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
        **saving,
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
        write_text_atomic(Path(output_dir) / "log_history.json", history + "\n")
    trainer.accelerator.wait_for_everyone()


def finish_tracking(report_to: str) -> None:
    """Close the stage's W&B run so the next stage starts its own (one run per stage, one group per pipeline)."""
    if report_to == "wandb":
        import wandb

        from align.tracking import is_managed

        # A run opened by the pipeline for this stage stays open: the pipeline logs artifacts to it, then closes it.
        if wandb.run is not None and not is_managed(wandb.run):
            wandb.finish()


# ---------------------------------------------------------------------------------------------------
# Crash-safe training


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``checkpoint-N`` cannot be resumed from, or None if it is complete.

    Cheap enough to run on every start (no tensor is loaded): the completion marker, ``trainer_state.json``
    at step N, and every weight, optimiser, scheduler and RNG file structurally whole.
    """
    path = Path(path)
    match = _CHECKPOINT.match(path.name)
    if not path.is_dir() or match is None:
        return "not a checkpoint-N directory"
    if not (path / COMPLETE).exists():
        return "no completion marker (the save was interrupted)"
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError) as err:
        return f"trainer_state.json unreadable ({err})"
    if state.get("global_step") != int(match.group(1)):
        return f"trainer_state.json is at step {state.get('global_step')}, not {match.group(1)}"
    # Plain and DDP checkpoints hold safetensors weights and torch-saved optimiser/scheduler/RNG files; FSDP and
    # DeepSpeed write sharded directories instead (pytorch_model_fsdp_*, optimizer_*, global_step*), whose
    # completeness rests on the marker.
    sharded = [p for p in path.iterdir() if p.is_dir() and p.name.startswith(("pytorch_model_fsdp", "global_step"))]
    weights = sorted(path.glob("*.safetensors"))
    if not weights and not sharded:
        return "no model weights (*.safetensors or a sharded state)"
    if not sharded:
        for required in ("optimizer.pt", "scheduler.pt"):
            if not (path / required).exists():
                return f"{required} missing"
        if not list(path.glob("rng_state*.pth")):
            return "no RNG state (rng_state*.pth)"
    for file in weights:
        if problem := safetensors_problem(file):
            return problem
    for file in sorted([*path.glob("*.pt"), *path.glob("rng_state*.pth")]):
        if problem := torch_file_problem(file):
            return problem
    return None


def newest_valid_checkpoint(output_dir: str | Path, *, delete_invalid: bool = True) -> Path | None:
    """The newest resumable checkpoint under ``<output_dir>/checkpoints``; invalid ones are warned about.

    Invalid checkpoints newer than the chosen one are deleted (``delete_invalid``), so that the Trainer does
    not later save into, or rotate by, a half-written directory.
    """
    root = Path(output_dir) / CHECKPOINTS
    found = sorted(
        (int(m.group(1)), p) for p in root.glob("checkpoint-*") if (m := _CHECKPOINT.match(p.name)) and p.is_dir()
    )
    for _, path in reversed(found):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        warnings.warn(f"{path}: skipping corrupt or partial checkpoint: {problem}", stacklevel=2)
        if delete_invalid:
            import shutil

            shutil.rmtree(path, ignore_errors=True)
    return None


class CrashSafety(TrainerCallback):
    """Marks finished checkpoints, and stops training at the first non-finite loss, before it is saved.

    A NaN or infinite loss makes the gradients non-finite; they are checked before the optimiser step, so
    the weights never take a non-finite update and no poisoned checkpoint is written: the newest checkpoint
    stays the last good one, and the error names the step.
    """

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self.stage = stage_of(output_dir)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None] if model is not None else []
        if grads and not math.isfinite(float(torch.nn.utils.get_total_norm(grads))):
            last = newest_valid_checkpoint(self.output_dir, delete_invalid=False)
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written before it"
            raise TrainingDiverged(
                f"{self.stage}: loss is NaN or infinite at step {state.global_step + 1} (non-finite gradients); "
                f"training stopped, {kept}. Lower the learning rate or check the data."
            )
        return control

    def on_save(self, args, state, control, **kwargs):
        from accelerate import PartialState

        checkpoint = self.output_dir / CHECKPOINTS / f"checkpoint-{state.global_step}"
        ps = PartialState()
        ps.wait_for_everyone()  # every rank has written its RNG state
        if ps.is_main_process and checkpoint.is_dir():
            (checkpoint / COMPLETE).write_text(f"{state.global_step}\n")
        ps.wait_for_everyone()
        fault_point(self.stage)
        return control


def train_resumable(trainer, output_dir: str | Path) -> tuple[Any, dict[str, float]]:
    """``trainer.train()``, resumed from the newest valid checkpoint in ``output_dir``; (result, metrics).

    The metrics are ``train_loss`` and ``steps``. ``TrainOutput.training_loss`` averages only the steps of
    this process's session, so after a resume ``train_loss`` is the step-weighted mean of the logged losses
    (which the checkpoint carries) instead, and ``resumed_from_step`` says where training picked up.
    """
    from accelerate import PartialState

    state = PartialState()
    checkpoint = None
    if state.is_main_process:
        checkpoint = newest_valid_checkpoint(output_dir)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = [str(checkpoint) if checkpoint else None]
        broadcast_object_list(box, from_process=0)
        checkpoint = Path(box[0]) if box[0] else None
    if checkpoint is not None:
        print(f"[align] {stage_of(output_dir)}: resuming training from {checkpoint}", flush=True)
    trainer.add_callback(CrashSafety(output_dir))
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    metrics = {"train_loss": float(result.training_loss), "steps": float(result.global_step)}
    if checkpoint is not None:
        start = int(_CHECKPOINT.match(checkpoint.name).group(1))
        metrics["resumed_from_step"] = float(start)
        metrics["train_loss"] = resumed_mean_loss(
            trainer.state.log_history, start, result.global_step, float(result.training_loss)
        )
    return result, metrics


def resumed_mean_loss(log_history: list[dict], start: int, end: int, session_mean: float) -> float:
    """The mean loss of a run resumed at step ``start``, as if it had not been interrupted.

    The Trainer's ``training_loss`` averages steps ``start+1..end`` only (this session). The steps before come
    from the losses logged up to ``start`` (restored with the checkpoint), each weighted by the steps it
    averages; exact when ``logging_steps`` divides ``save_steps``, else the mean of the steps that were logged.
    """
    total, covered, last = 0.0, 0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry and entry["step"] <= start:
            total += float(entry["loss"]) * (entry["step"] - last)
            covered += entry["step"] - last
            last = entry["step"]
    session = end - start
    return (total + session_mean * session) / max(covered + session, 1)
