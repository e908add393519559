"""What every TRL-backed stage shares: typed settings to TRL kwargs, LoRA, and crash-safe checkpoints.

Checkpoints: the Trainer writes ``<output_dir>/checkpoints/checkpoint-N`` every ``save_steps`` steps (model,
optimiser, scheduler, RNG states, and ``trainer_state.json``, which holds the data position), and
:func:`train_resumable` restarts from the newest *valid* one. The Trainer writes a checkpoint file by file,
so a kill mid-save leaves a partial directory; :func:`checkpoint_problem` detects that (a completion marker
written after the save, plus cheap structural checks of every file), and such a checkpoint is skipped with a
warning and deleted, never loaded (:mod:`align.train.checkpoints`, shared with PPO). The pipeline keeps
``checkpoints/`` of a dead stage for its next attempt. A resumed run trains on the same batches in the same
order as an uninterrupted one, in every epoch: the samplers that shuffle by themselves are seeded per epoch
(:class:`EpochSeededData`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from trl.trainer.utils import RepeatSampler

from align import console
from align.config import LoraSettings, TrainSettings
from align.faults import fault_point, stage_of
from align.files import write_text_atomic
from align.train import checkpoints
from align.train.checkpoints import CHECKPOINTS, COMPLETE, trainer_checkpoint_problem

__all__ = [
    "CHECKPOINTS",
    "COMPLETE",
    "CrashSafety",
    "EpochSeededData",
    "checkpoint_problem",
    "finish_tracking",
    "newest_valid_checkpoint",
    "peft_config",
    "save_merged",
    "train_resumable",
    "trainer_kwargs",
]

# what a failed write of the final model leaves: the stage unpublished, its checkpoints kept for the re-run
UNPUBLISHED = "the stage is not published; make room and run the same command again (it resumes)"


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
    kwargs = dict(
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
    shadowed = sorted(set(cfg.trl) & set(kwargs))
    if shadowed:
        from align.config import ConfigError

        raise ConfigError(f"trl: {shadowed} are typed settings of the stage; set them there, not under trl:")
    return {**kwargs, **cfg.trl}  # any other TRL argument, checked against TRL's config by check_trl_arguments


def check_trl_arguments(where: Any, arguments: dict[str, Any], trl_config: type) -> None:
    """Fail before any stage runs on a ``trl:`` key the stage's TRL config does not have, listing the valid ones.

    ``where(key)`` gives the location to report (file, line and field of the key).
    """
    import dataclasses
    import difflib

    from align.config import ConfigError

    valid = sorted(f.name for f in dataclasses.fields(trl_config) if f.init)
    for key in arguments:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"{where(key)}: {trl_config.__name__} has no argument {key!r}{hint} Valid: {', '.join(valid)}"
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

    Under ZeRO-3 and FSDP no process holds the whole model, so the Trainer's own save gathers the full weights
    first (ZeRO-3 needs ``zero3_save_16bit_model``, FSDP a full state dict, as the shipped accelerate configs
    set); a LoRA adapter saved that way is then merged into its base on the main process. The trainer's log
    history goes next to the model (``log_history.json``), so reports can plot any finished stage's curves.
    """
    from accelerate.utils import DistributedType

    accelerator = trainer.accelerator
    try:
        if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            trainer.save_model(output_dir)
            if accelerator.is_main_process and (Path(output_dir) / "adapter_config.json").exists():
                _merge_adapter_dir(output_dir)
        else:
            unwrapped = accelerator.unwrap_model(trainer.model)
            if hasattr(unwrapped, "merge_and_unload"):
                unwrapped = unwrapped.merge_and_unload()
            if accelerator.is_main_process:
                unwrapped.save_pretrained(output_dir, safe_serialization=True)
        if accelerator.is_main_process:
            tokenizer.save_pretrained(output_dir)
    except Exception as err:  # a full disk or read-only filesystem: name the file, not a traceback
        failure = checkpoints.write_failure(err, output_dir, UNPUBLISHED)
        if failure is not None:
            raise failure from err
        raise
    if accelerator.is_main_process:
        history = json.dumps(trainer.state.log_history, indent=1, default=float)
        write_text_atomic(Path(output_dir) / "log_history.json", history + "\n")
    accelerator.wait_for_everyone()


def _merge_adapter_dir(output_dir: str) -> None:
    """Replace a saved LoRA adapter by the merged full model (on CPU), so the directory loads like any model."""
    from peft import AutoPeftModel

    model = AutoPeftModel.from_pretrained(output_dir, dtype="auto").merge_and_unload()
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        (Path(output_dir) / name).unlink(missing_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)


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

checkpoint_problem = trainer_checkpoint_problem  # the Trainer's checkpoints: align.train.checkpoints


def newest_valid_checkpoint(output_dir: str | Path, *, delete_invalid: bool = True) -> Path | None:
    """The newest resumable Trainer checkpoint under ``<output_dir>/checkpoints`` (:mod:`align.train.checkpoints`)."""
    return checkpoints.newest_valid_checkpoint(output_dir, problem=checkpoint_problem, delete_invalid=delete_invalid)


# torch.multinomial's error when a policy whose weights blew up is sampled from
NON_FINITE_SAMPLING = "probability tensor contains either `inf`, `nan` or element < 0"


class EpochSeededSampler:
    """Makes a sampler draw epoch e's order from a generator seeded with ``seed + e``, nothing else.

    Why: transformers' length-grouped sampler shuffles with the global RNG when its iterator starts, and TRL's
    RepeatSampler (GRPO, RLOO) with one generator that carries on from epoch to epoch. An uninterrupted run draws
    epoch 2's order from whatever state epoch 1 left; a run resumed in epoch 2 starts a fresh sampler and draws
    another order, so it trains on other batches and ends with other weights. The Trainer tells the sampler its
    epoch (``set_epoch``), including after a resume, so a seed per epoch gives both runs the same order, as
    accelerate's seedable random sampler does for plain shuffling.
    """

    seed: int
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


class _SeededLengthGrouped(EpochSeededSampler, LengthGroupedSampler):
    pass


class _SeededRepeat(EpochSeededSampler, RepeatSampler):
    pass


class EpochSeededData:
    """Trainer mixin: the training sampler's order depends on the seed and the epoch only (:class:`EpochSeededSampler`),
    so a run resumed in any epoch sees the batches an uninterrupted run sees."""

    def _get_train_sampler(self, *args, **kwargs):
        sampler = super()._get_train_sampler(*args, **kwargs)
        seeded = {LengthGroupedSampler: _SeededLengthGrouped, RepeatSampler: _SeededRepeat}.get(type(sampler))
        if seeded is None:  # plain shuffling: accelerate's seedable sampler already seeds per epoch
            return sampler
        out = seeded.__new__(seeded)
        out.__dict__.update(vars(sampler))
        out.seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return out


class LogToFile(TrainerCallback):
    """The Trainer's log lines (loss, learning rate, ...), into the run's log file instead of the console."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            console.log(f"[align] {self.stage} step {state.global_step}: {json.dumps(logs, default=str)}")
        return control


class CrashSafety(TrainerCallback):
    """Marks finished checkpoints, and stops training at the first non-finite loss, before it is saved.

    A NaN or infinite loss makes the gradients non-finite; they are checked before the optimiser step, so
    the weights never take a non-finite update and no poisoned checkpoint is written: the newest checkpoint
    stays the last good one, and the error names the step. ``saving`` is the checkpoint being written, so
    that a failed write can be reported with its file.
    """

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self.stage = stage_of(output_dir)
        self.saving: Path | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None] if model is not None else []
        if grads and not math.isfinite(float(torch.nn.utils.get_total_norm(grads))):
            raise checkpoints.diverged(
                self.output_dir, state.global_step + 1, "non-finite gradients", problem=checkpoint_problem
            )
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:  # the Trainer saves right after the step-end callbacks
            self.saving = self.output_dir / CHECKPOINTS / f"checkpoint-{state.global_step}"
        return control

    def on_save(self, args, state, control, **kwargs):
        from accelerate import PartialState

        checkpoint = self.output_dir / CHECKPOINTS / f"checkpoint-{state.global_step}"
        ps = PartialState()
        ps.wait_for_everyone()  # every rank has written its RNG state
        if ps.is_main_process and checkpoint.is_dir():
            checkpoints.mark_complete(checkpoint, state.global_step)
        ps.wait_for_everyone()
        self.saving = None
        fault_point(self.stage)
        return control


def train_resumable(trainer, output_dir: str | Path) -> tuple[Any, dict[str, float]]:
    """``trainer.train()``, resumed from the newest valid checkpoint in ``output_dir``; (result, metrics).

    The metrics are ``train_loss`` and ``steps``. ``TrainOutput.training_loss`` averages only the steps of
    this process's session, so after a resume ``train_loss`` is the step-weighted mean of the logged losses
    (which the checkpoint carries) instead, and ``resumed_from_step`` says where training picked up. A loss
    that ends non-finite raises :class:`TrainingDiverged`; a checkpoint that cannot be written (disk full,
    read-only) raises :class:`~align.files.WriteError` naming the file.
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
    safety = CrashSafety(output_dir)
    trainer.add_callback(safety)
    if console.quiet():  # the per-step log lines and the bar go to the log file only; the stage lines stay
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(LogToFile(stage_of(output_dir)))
    try:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except Exception as err:
        if safety.saving is not None and (failure := checkpoints.write_failure(err, safety.saving)) is not None:
            raise failure from err
        if NON_FINITE_SAMPLING in str(err):  # GRPO/RLOO sample from the policy: NaN logits fail there first
            step = trainer.state.global_step + 1
            raise checkpoints.diverged(output_dir, step, "non-finite outputs", problem=checkpoint_problem) from err
        raise
    metrics = {"train_loss": float(result.training_loss), "steps": float(result.global_step)}
    if checkpoint is not None:
        start = checkpoints.checkpoint_step(checkpoint)
        metrics["resumed_from_step"] = float(start)
        metrics["train_loss"] = resumed_mean_loss(
            trainer.state.log_history, start, result.global_step, float(result.training_loss)
        )
    if not math.isfinite(metrics["train_loss"]):
        raise checkpoints.diverged(output_dir, result.global_step, "the mean training loss", problem=checkpoint_problem)
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
