"""GRPO and RLOO stages: thin typed wrappers over TRL's GRPOTrainer and RLOOTrainer, scored by our reward model.

Both sample ``num_generations`` completions per prompt and use the other completions of the same prompt as the
baseline, so neither needs a value model (unlike PPO). The reward is the reward model trained by the reward
stage: TRL renders prompt + completion as one conversation with the reward tokenizer's chat template and reads
the score at its last token, which is how our RewardTrainer-trained model saw each chosen/rejected conversation
(tests/test_grpo.py checks that the rewards TRL computed equal the reward model's score of the conversation).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import trl.trainer.grpo_trainer
import trl.trainer.rloo_trainer
from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
from trl.data_utils import is_conversational

from align.config import GRPOStageConfig, OnlineRLSettings, RLOOStageConfig
from align.train.common import (
    EpochSeededData,
    finish_tracking,
    peft_config,
    save_merged,
    train_resumable,
    trainer_kwargs,
)
from align.train.reward import load_reward_model


class SeededGRPOTrainer(EpochSeededData, GRPOTrainer):
    """TRL's GRPOTrainer whose prompt order depends on the seed and epoch only, so resuming is exact."""


class SeededRLOOTrainer(EpochSeededData, RLOOTrainer):
    """TRL's RLOOTrainer whose prompt order depends on the seed and epoch only, so resuming is exact."""


def load_reward_function(
    reward_model_path: str, trust_remote_code: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The reward model and its own tokenizer, as TRL takes them (``reward_funcs``, ``reward_processing_classes``).

    The tokenizer is the reward model's, not the policy's: its chat template and pad id are the ones the reward
    model was trained with, and the classifier reads the reward at the last non-pad token.
    """
    model = load_reward_model(reward_model_path, trust_remote_code, seed=None).eval()
    tokenizer = AutoTokenizer.from_pretrained(reward_model_path, trust_remote_code=trust_remote_code)
    return model, tokenizer


def prompt_lengths(tokenizer: PreTrainedTokenizerBase, prompts: Dataset) -> list[int]:
    """Token count of each prompt as the policy sees it: the chat template with the assistant header appended."""
    return [
        len(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
        for p in prompts["prompt"]
    ]


def check_prompts(prompts: Dataset) -> None:
    """Fail before building a trainer, naming the problem: TRL's own errors surface deep inside generation."""
    if "prompt" not in prompts.column_names:
        raise ValueError(f"prompts dataset needs a 'prompt' column; it has {prompts.column_names}")
    if len(prompts) == 0:
        raise ValueError("prompts dataset is empty")
    if not is_conversational(prompts[0]):
        raise ValueError(
            "prompts must be conversations, e.g. {'prompt': [{'role': 'user', 'content': ...}]}, so that the policy "
            "and the reward model both see them through their chat templates"
        )


def _online_args(cfg: OnlineRLSettings, output_dir: str, seed: int, report_to: str, run_name: str) -> dict[str, Any]:
    """Keyword arguments shared by GRPOConfig and RLOOConfig.

    ``max_length`` is ours, not TRL's (it has no prompt limit): it is applied by dropping long prompts instead.
    """
    kwargs = trainer_kwargs(cfg, output_dir, seed, report_to, run_name)
    del kwargs["max_length"]
    return dict(
        **kwargs,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        num_iterations=cfg.num_iterations,
        mask_truncated_completions=cfg.mask_truncated_completions,
        use_vllm=cfg.use_vllm,
        vllm_mode=cfg.vllm_mode,
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size=cfg.vllm_tensor_parallel_size,
        vllm_server_base_url=cfg.vllm_server_base_url,
    )


@contextlib.contextmanager
def _reference_is_copy_of(module: Any, policy: PreTrainedModel) -> Iterator[None]:
    """Make TRL's reference model a frozen copy of ``policy`` instead of a reload of ``policy``'s path.

    TRL builds the reference with ``create_model_from_path(policy.config._name_or_path)``, which fails for a model
    built in code and silently differs from the policy if it was changed after loading. As in the DPO stage, the
    reference is the starting policy itself. Only that one call is redirected (a policy given as an instance is
    never loaded by path), and only while the trainer is being built.
    """
    original = module.create_model_from_path
    wanted = policy.config._name_or_path

    def reference(model_id: str, *args: Any, **kwargs: Any) -> PreTrainedModel:
        if model_id != wanted:
            return original(model_id, *args, **kwargs)
        return copy.deepcopy(policy).eval()

    module.create_model_from_path = reference
    try:
        yield
    finally:
        module.create_model_from_path = original


def build_trainer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Dataset,
    reward_model_path: str,
    cfg: GRPOStageConfig | RLOOStageConfig,
    output_dir: str,
    *,
    seed: int,
    report_to: str = "none",
    run_name: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[GRPOTrainer | RLOOTrainer, int]:
    """TRL's GRPOTrainer or RLOOTrainer (picked by the config's type), and how many prompts were too long."""
    kind = "grpo" if isinstance(cfg, GRPOStageConfig) else "rloo"
    run_name = run_name or kind
    check_prompts(prompts)
    budget = cfg.max_length - cfg.max_completion_length
    lengths = prompt_lengths(tokenizer, prompts)
    keep = [i for i, n in enumerate(lengths) if n <= budget]
    if not keep:
        raise ValueError(
            f"every prompt is longer than max_length - max_completion_length = {budget} tokens "
            f"(shortest: {min(lengths)})"
        )
    dropped = len(prompts) - len(keep)
    if dropped:
        prompts = prompts.select(keep)
    reward_model, reward_tokenizer = load_reward_function(reward_model_path, trust_remote_code)
    common = _online_args(cfg, output_dir, seed, report_to, run_name)
    if kind == "grpo":
        assert isinstance(cfg, GRPOStageConfig)
        args = GRPOConfig(**common, loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards)
        trainer_cls, module = SeededGRPOTrainer, trl.trainer.grpo_trainer
    else:
        assert isinstance(cfg, RLOOStageConfig)
        args = RLOOConfig(**common, normalize_advantages=cfg.normalize_advantages)
        trainer_cls, module = SeededRLOOTrainer, trl.trainer.rloo_trainer
    with _reference_is_copy_of(module, model):
        trainer = trainer_cls(
            model=model,
            reward_funcs=reward_model,
            args=args,
            train_dataset=prompts,
            processing_class=tokenizer,
            reward_processing_classes=reward_tokenizer,
            peft_config=peft_config(cfg.lora),
        )
    return trainer, dropped


def run_online(trainer: GRPOTrainer | RLOOTrainer, tokenizer, output_dir: str, dropped: int, report_to: str) -> dict:
    """Train (resuming from the newest valid checkpoint in ``output_dir``), save the merged policy and
    ``log_history.json``, and summarise the reward curve.

    ``reward_first``/``reward_last`` are the mean reward-model scores of the first and last logged steps: the
    stage's reward gain, without a separate evaluation pass. A non-finite loss raises TrainingDiverged.
    """
    _, trained = train_resumable(trainer, output_dir)
    rewards = [h["reward"] for h in trainer.state.log_history if h.get("reward") is not None]
    save_merged(trainer, tokenizer, output_dir)
    finish_tracking(report_to)
    metrics: dict[str, float] = {**trained, "prompts_too_long": float(dropped)}
    if rewards:
        metrics.update(reward_first=float(rewards[0]), reward_last=float(rewards[-1]))
    return metrics


def train_online(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Dataset,
    reward_model_path: str,
    cfg: GRPOStageConfig | RLOOStageConfig,
    output_dir: str,
    *,
    seed: int,
    report_to: str = "none",
    run_name: str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, float]:
    """Optimise the policy with GRPO or RLOO (by the config's type) against the reward model at
    ``reward_model_path``; save it to ``output_dir``.

    ``prompts`` has a conversational ``prompt`` column. Returns train_loss, steps, prompts_too_long and, when a
    step was logged, reward_first and reward_last (mean reward-model score of the first and last logged steps).
    """
    trainer, dropped = build_trainer(
        model,
        tokenizer,
        prompts,
        reward_model_path,
        cfg,
        output_dir,
        seed=seed,
        report_to=report_to,
        run_name=run_name,
        trust_remote_code=trust_remote_code,
    )
    return run_online(trainer, tokenizer, output_dir, dropped, report_to)
