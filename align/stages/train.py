"""The training stages: the helpful base model, SL-CAI's SFT, the reward model, the optimiser (DPO/PPO/GRPO/RLOO)."""

from __future__ import annotations

import random
from pathlib import Path

from align.data import read_jsonl
from align.models import load_causal_lm, load_tokenizer, resolve, write_pointer
from align.stages.context import Context, Result
from align.worlds import world_model


def train_base(ctx: Context, out: Path) -> Result:
    """The helpful model the chain starts from.

    A world that builds its own model (``base_model: tiny:base``) trains it; with ``sft.dataset`` the base model
    is fine-tuned on those conversations; without one the base model is used as it is (the CAI paper and Hugging
    Face's recipe start from an already-helpful model), and the stage only records which model it stands for.
    """
    config = ctx.config
    if world_model(config.base_model, ctx.world):
        return Result(ctx.world.train_base_model(out, config.report_to))
    if config.sft.dataset is None:
        if ctx.is_main_process:
            write_pointer(out, config.base_model)
        return Result({"stands_for": config.base_model})
    from datasets import Dataset

    from align.train.sft import train_sft

    model, tokenizer = load_causal_lm(
        config.base_model, config.sft, trust_remote_code=config.trust_remote_code, field="base_model"
    )
    rows = Dataset.from_list(ctx.data["sft.dataset"])
    metrics = train_sft(model, tokenizer, rows, config.sft, str(out), seed=config.seed, report_to=config.report_to)
    return Result({**metrics, "conversations": len(rows)})


def sft_cai(ctx: Context, base: Path, samples_dir: Path, out: Path) -> Result:
    """SL-CAI: fine-tune the helpful model on the revisions plus the helpful answers (Bai et al. 2022, section 3)."""
    from datasets import Dataset

    from align.train.sft import train_sft

    config = ctx.config
    model, tokenizer = load_causal_lm(
        str(base), config.sft_cai, trust_remote_code=config.trust_remote_code, field="sft"
    )
    data = Dataset.from_list(read_jsonl(samples_dir / "sft.jsonl"))
    metrics = train_sft(
        model,
        tokenizer,
        data,
        config.sft_cai,
        str(out),
        seed=config.seed,
        report_to=config.report_to,
        run_name="sft_cai",
    )
    return Result(metrics)


def reward(ctx: Context, pairs_dir: Path, init: Path, out: Path) -> Result:
    """A Bradley-Terry reward model on the (soft) preference labels, from the SL-CAI model; held-out accuracy and
    calibration on ``eval_fraction`` of the pairs."""
    from datasets import Dataset

    from align.train.reward import load_reward_model, train_reward

    config = ctx.config
    section = config.reward
    rows = [
        {k: r[k] for k in ("prompt", "chosen", "rejected", "label")}
        for r in read_jsonl(pairs_dir / "preferences.jsonl")
    ]
    random.Random(config.seed).shuffle(rows)
    n_eval = max(1, round(section.eval_fraction * len(rows)))
    model = load_reward_model(resolve(init), config.trust_remote_code, seed=config.seed, loading=section)
    tokenizer = load_tokenizer(str(init), trust_remote_code=config.trust_remote_code, field="reward")
    metrics = train_reward(
        model,
        tokenizer,
        Dataset.from_list(rows[n_eval:]),
        Dataset.from_list(rows[:n_eval]),
        section,
        str(out),
        seed=config.seed,
        report_to=config.report_to,
        run_name="reward",
    )
    return Result(metrics)


def optimise(ctx: Context, policy_dir: Path, pairs_dir: Path, reward_dir: Path | None, out: Path) -> Result:
    """From the SL-CAI model: DPO on the preference pairs, or PPO (ours), GRPO or RLOO (TRL's) against the reward
    model, as ``optimizer`` says. Online RL prompts are harmful and benign alike: the policy must keep helping."""
    config = ctx.config
    name = config.optimizer
    section = getattr(config, name)
    trust = config.trust_remote_code
    policy, tokenizer = load_causal_lm(str(policy_dir), section, trust_remote_code=trust, field=name)
    if name == "dpo":
        from datasets import Dataset

        from align.train.dpo import train_dpo

        pairs = [
            {k: r[k] for k in ("prompt", "chosen", "rejected")} for r in read_jsonl(pairs_dir / "preferences.jsonl")
        ]
        data = Dataset.from_list(pairs)
        return Result(
            train_dpo(policy, tokenizer, data, section, str(out), seed=config.seed, report_to=config.report_to)
        )
    conversations = [p.conversation() for p in ctx.prompts(f"{name}.prompts")]
    if name == "ppo":
        from align.config import ModelLoading
        from align.rl import train_ppo
        from align.train.reward import load_reward_model

        # The reward model (and the critic made from it) in the policy's dtype: bfloat16 on a GPU under `auto`,
        # float32 on CPU. Never 4-bit: a full critic copied from it must be trainable.
        loading = ModelLoading(torch_dtype=section.torch_dtype, attn_implementation=section.attn_implementation)
        reward_model = load_reward_model(str(reward_dir), trust, seed=config.seed, loading=loading)
        reward_tokenizer = load_tokenizer(str(reward_dir), trust_remote_code=trust, field="reward")
        # Checkpoints go to out/checkpoints, which the pipeline keeps when the stage dies: the same command resumes.
        metrics = train_ppo(
            policy,
            tokenizer,
            reward_model,
            conversations,
            section,
            str(out),
            seed=config.seed,
            reward_tokenizer=reward_tokenizer,
            report_to=config.report_to,
        )
        return Result(metrics)
    from datasets import Dataset

    from align.train.grpo import train_online

    metrics = train_online(
        policy,
        tokenizer,
        Dataset.from_list([{"prompt": c} for c in conversations]),
        str(reward_dir),
        section,
        str(out),
        seed=config.seed,
        report_to=config.report_to,
        run_name=name,
        trust_remote_code=trust,
    )
    return Result(metrics)
