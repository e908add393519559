"""align's PPO against TRL 1.12's ``trl.experimental.ppo.PPOTrainer``: same models, prompts and hyper-parameters.

    python scripts/bench_ppo.py [--steps 20] [--only align|trl] [--threads 2] [--value-models full,shared]
                                [--ppo.learning_rate=1e-4 ...]

One run prints, side by side: seconds per PPO step (median and mean over the steps after the first, which
pays for warm-up), peak resident memory of the process (``ru_maxrss``: models, optimiser and activations),
the tokens each forward pass over a rollout reads, padding included (both sides make the same passes, so this
is the arithmetic each does), and the mean reward-model score of the first and last steps' rollouts with the
gain between them.

What it sets up, once, under ``.bench/`` (gitignored):

* ``.bench/trl-1.12/``: a throwaway virtual environment with TRL 1.12.0 (see ``TRL_ENV``; torch is the CPU
  build). The project itself does not depend on TRL 1.12, whose PPO moved to ``trl.experimental``.
* ``.bench/<config>/``: the recipe run of ``--config`` (default ``recipes/configs/cai_smoke.yaml``, about a
  minute): the policy is its SL-CAI model (``sft_cai/``), the reward model its ``reward/``, the prompts the tiny
  world's training requests that fit ``max_prompt_length`` (``prompts.json``). The smoke recipe's AI labels
  are all near 0.5, which leaves its reward model flat (scores within +-0.01, nothing to climb), so the
  fixture trains it on revision-over-original pairs instead (``RECIPE_OVERRIDES``): a reward with a real
  spread (std ~2) that PPO can raise. ``--config recipes/configs/cai_tiny.yaml`` uses the demo's 0.9M-parameter
  model and its calibrated reward model, but its base model takes 3 minutes on 2 idle cores (far longer on a
  busy machine) and each PPO step costs more.

Each side runs in its own child process (align in this environment, TRL in the throwaway one), one after the
other, with the same number of torch threads, so peak memory and step times are comparable. align runs once per
critic in ``--value-models`` (``ppo.value_model``: full, lora, shared), each its own column; TRL 1.12 has only a
full critic.

The two sides score the same text. Our reward model was trained on chat-template conversations, whose last
token follows ``<|im_end|>``; TRL 1.12 scores the raw ids prompt + response, read at ``<|im_end|>``. So the TRL
prompts are the chat-template ids with the generation prompt, and by default (``--trl-scoring chat``) TRL's
reward call is redirected to score the conversation prompt + decoded response exactly as align does (one
reward-model forward per rollout batch either way). ``--trl-scoring native`` keeps TRL's own scoring.

Hyper-parameters are one ``PPOStageConfig`` (``BENCH`` below, overridable with ``--ppo.FIELD=VALUE``), mapped
field by field to TRL's ``PPOConfig`` in :func:`trl_config`. Known differences that cannot be mapped: TRL 1.12
does not clip gradients (``max_grad_norm`` is unused there), has no reward normalisation or adaptive KL
(the bench turns both off on the align side), and samples with top_k=0, top_p=1 (the bench keeps top_p=1).
With more than one minibatch per rollout TRL steps its optimiser once per ``gradient_accumulation_steps``
micro-batches counted across minibatches, so the bench uses one minibatch per rollout by default and warns
otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / ".bench"
TRL_VENV = BENCH_DIR / "trl-1.12"
# TRL 1.12.0 with the project's own pins of everything else (they install and run together); torch==2.13.0
# resolves to the CPU wheel here. Elsewhere pass --torch-index-url https://download.pytorch.org/whl/cpu, or an
# unpinned index pulls gigabytes of CUDA wheels.
TRL_ENV = ["trl==1.12.0", "transformers==5.23.0", "accelerate==1.15.0", "datasets==5.2.0", "tokenizers==0.23.3"]
TORCH = "torch==2.13.0"

# Recipe overrides for the fixture, per config file name (see the module docstring).
RECIPE_OVERRIDES = {"cai_smoke": ["--preferences.mode=revision_pairs", "--reward.num_train_epochs=20"]}

# PPOStageConfig fields for the bench, sized for the tiny world's models on CPU. Fields not named
# here keep PPOStageConfig's defaults.
BENCH = {
    "learning_rate": 1e-4,  # tiny models train at 1e-3; 3e-6 (a 1B model's) would not move them in 20 steps
    "rollout_batch_size": 32,
    "mini_batch_size": 32,  # one minibatch per rollout: see the module docstring
    "gradient_accumulation_steps": 1,
    "ppo_epochs": 4,
    "max_new_tokens": 48,  # as the tiny recipe samples: every answer in the tiny world fits in about 30 tokens
    "temperature": 0.7,
    "top_p": 1.0,  # TRL 1.12 always samples with top_p=1
    "kl_coef": 0.05,
    "adaptive_kl": False,  # TRL 1.12 has a fixed KL coefficient
    "normalize_reward": False,  # TRL 1.12 uses raw scores
    "whiten_rewards": False,
    "missing_eos_penalty": 1.0,
    "max_prompt_length": 64,
    "save_steps": 0,  # no checkpoints inside the timed loop (TRL: save_strategy="no")
    "logging_steps": 1,
}


# ---- driver ------------------------------------------------------------------------------------------------


def ensure_trl_env(torch_index_url: str | None) -> Path:
    """Create the throwaway TRL 1.12 environment unless it is already there with the right TRL."""
    python = TRL_VENV / "bin" / "python"
    if python.exists():
        probe = subprocess.run([python, "-c", "import trl; print(trl.__version__)"], capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "1.12.0":
            return python
    print(f"[bench] creating {TRL_VENV} (torch CPU + {' '.join(TRL_ENV)}); this takes a few minutes", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(TRL_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    torch_cmd = [*pip, TORCH] + (["--index-url", torch_index_url] if torch_index_url else [])
    subprocess.run(torch_cmd, check=True)
    subprocess.run([*pip, *TRL_ENV], check=True)
    return python


def ensure_fixture(fixture: Path, config: str, max_prompt_length: int, threads: int = 2) -> None:
    """Train the smoke recipe's models into ``fixture`` (once) and write the prompts both sides use.

    The recipe runs with ``threads`` intra-op threads: on a machine shared with other jobs, two threads that
    wait on each other trained the demo's base model about 5x slower than one (7 vs 38 steps a minute here).
    """
    if not all((fixture / stage / "model.safetensors").exists() for stage in ("sft_cai", "reward")):
        print(f"[bench] training the fixture models with {config} into {fixture}", flush=True)
        env = {**os.environ, "ALIGN_CACHE": os.environ.get("ALIGN_CACHE", str(BENCH_DIR / "cache"))}
        env["OMP_NUM_THREADS"] = str(threads)
        cmd = [sys.executable, str(ROOT / "recipes" / "cai.py"), "--config", config]
        cmd += [f"--output_dir={fixture.parent}", f"--run_name={fixture.name}", "--report_to=none"]
        cmd += ["--until=reward"]  # the bench needs the SL-CAI policy and the reward model, not the later stages
        cmd += RECIPE_OVERRIDES.get(Path(config).stem, [])
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    from transformers import AutoTokenizer

    from align.config import RecipeConfig, load_config
    from align.worlds import load_world

    tokenizer = AutoTokenizer.from_pretrained(fixture / "sft_cai")
    split = load_world(load_config(RecipeConfig, config)).split
    prompts = [[{"role": "user", "content": r.text}] for r in split.train]
    fits = [
        p
        for p in prompts
        if len(
            tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        )
        <= max_prompt_length
    ]
    (fixture / "prompts.json").write_text(json.dumps(fits) + "\n")


def bench_config(overrides: list[str]) -> dict:
    """The resolved PPOStageConfig as plain data: BENCH, then ``--ppo.FIELD=VALUE`` overrides, then checks."""
    from align.config import PPOStageConfig, load_config, to_dict

    args = [f"{k}={json.dumps(v)}" for k, v in BENCH.items()]
    args += [o.removeprefix("--").removeprefix("ppo.") for o in overrides]
    cfg = to_dict(load_config(PPOStageConfig, None, args))
    if cfg["rollout_batch_size"] != cfg["mini_batch_size"] and cfg["gradient_accumulation_steps"] > 1:
        print("[bench] warning: several minibatches and gradient accumulation: TRL 1.12 steps differently", flush=True)
    return cfg


def summarise(result: dict) -> dict:
    """Seconds per step (after the first), peak RSS and the reward gain of one side's result."""
    steps = result["steps"]
    seconds = [s["seconds"] for s in steps[1:]] or [steps[0]["seconds"]]
    rewards = [s["reward_mean"] for s in steps]
    k = max(1, min(3, len(rewards) // 4))  # average a few steps at each end: one batch's mean is noisy
    return {
        "median_s": statistics.median(seconds),
        "mean_s": statistics.fmean(seconds),
        "peak_rss_mib": result["peak_rss_mib"],
        "pass_tokens": statistics.median(s["pass_tokens"] for s in steps) if "pass_tokens" in steps[0] else math.nan,
        "reward_first": rewards[0],
        "reward_last": rewards[-1],
        "gain": statistics.fmean(rewards[-k:]) - statistics.fmean(rewards[:k]),
        "k": k,
        "n": len(steps),
    }


def print_table(summaries: dict[str, dict]) -> None:
    """One column per side; then each align side's speed and memory against TRL's, when TRL ran."""
    rows = [
        ("seconds / PPO step (median)", "median_s", "{:.3f}"),
        ("seconds / PPO step (mean)", "mean_s", "{:.3f}"),
        ("peak RSS (MiB)", "peak_rss_mib", "{:.0f}"),
        ("tokens per forward pass over a rollout (median)", "pass_tokens", "{:.0f}"),
        ("reward, first step", "reward_first", "{:+.3f}"),
        ("reward, last step", "reward_last", "{:+.3f}"),
        ("reward gain (last k - first k steps)", "gain", "{:+.3f}"),
    ]
    sides = list(summaries)
    print()
    print("| | " + " | ".join(sides) + " |")
    print("|---|" + "---:|" * len(sides))
    for label, key, fmt in rows:
        print(f"| {label} | " + " | ".join(fmt.format(summaries[s][key]) for s in sides) + " |")
    if "trl" in summaries:
        trl = summaries["trl"]
        print()
        for side in (s for s in sides if s != "trl"):
            a = summaries[side]
            print(
                f"{side} vs TRL: {trl['median_s'] / a['median_s']:.2f}x faster (median), "
                f"{trl['mean_s'] / a['mean_s']:.2f}x (mean); peak RSS {a['peak_rss_mib'] / trl['peak_rss_mib']:.2f}x; "
                f"TRL's passes read {trl['pass_tokens'] / a['pass_tokens']:.2f}x the tokens"
            )
    any_side = next(iter(summaries.values()))
    print(f"\n{any_side['n']} steps per side; k = {any_side['k']}; first step excluded from the step times.")


def side_names(only: str | None, value_models: list[str]) -> list[str]:
    """``align[<critic>]`` per value model, then ``trl``; one align critic keeps the plain name ``align``."""
    align = ["align"] if value_models == ["full"] else [f"align[{v}]" for v in value_models]
    return {"align": align, "trl": ["trl"], None: [*align, "trl"]}[only]


def drive(args: argparse.Namespace, overrides: list[str]) -> None:
    fixture = Path(args.fixture or BENCH_DIR / Path(args.config).stem).resolve()
    cfg = bench_config(overrides)
    ensure_fixture(fixture, args.config, cfg["max_prompt_length"], args.threads)
    results = BENCH_DIR / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "ppo_config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    value_models = [v.strip() for v in args.value_models.split(",") if v.strip()]
    unknown = sorted(set(value_models) - {"full", "lora", "shared"})
    if unknown or not value_models:
        raise SystemExit(f"--value-models: {unknown or 'none given'}; choose from full, lora, shared")
    sides = side_names(args.only, value_models)
    pythons = {"align": Path(sys.executable)}
    if "trl" in sides:
        pythons["trl"] = ensure_trl_env(args.torch_index_url)
    summaries = {}
    for side in sides:
        kind = "trl" if side == "trl" else "align"
        value_model = side.removeprefix("align[").removesuffix("]") if side.startswith("align[") else "full"
        out = results / side.replace("[", "-").replace("]", "")
        shutil.rmtree(out, ignore_errors=True)  # align's PPO would resume from a previous run's checkpoints
        cmd = [str(pythons[kind]), str(Path(__file__).resolve()), "--side", kind, "--fixture", str(fixture)]
        cmd += ["--out", str(out), "--steps", str(args.steps), "--seed", str(args.seed)]
        cmd += ["--threads", str(args.threads), "--trl-scoring", args.trl_scoring, "--value-model", value_model]
        print(f"[bench] {side}: {args.steps} PPO steps", flush=True)
        env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
        summaries[side] = summarise(json.loads((out / "result.json").read_text()))
    (results / "summary.json").write_text(json.dumps(summaries, indent=1) + "\n")
    print_table(summaries)


# ---- children ----------------------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_align(fixture: Path, cfg_dict: dict, out: Path, steps: int, seed: int, value_model: str = "full") -> list[dict]:
    """align's PPO with the ``value_model`` critic; per-step reward and time come from its ``log_history.json``."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from align.config import PPOStageConfig, load_config
    from align.rl.ppo import train_ppo

    settings = {**cfg_dict, "steps": steps, "value_model": value_model}
    cfg = load_config(PPOStageConfig, None, [f"{k}={json.dumps(v)}" for k, v in settings.items()])
    prompts = json.loads((fixture / "prompts.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(fixture / "sft_cai")
    policy = AutoModelForCausalLM.from_pretrained(fixture / "sft_cai")
    reward_model = AutoModelForSequenceClassification.from_pretrained(fixture / "reward", num_labels=1)
    reward_tokenizer = AutoTokenizer.from_pretrained(fixture / "reward")
    reward_model.config.pad_token_id = reward_tokenizer.pad_token_id  # the classifier reads the last non-pad token
    train_ppo(policy, tokenizer, reward_model, prompts, cfg, str(out), seed=seed, reward_tokenizer=reward_tokenizer)
    history = json.loads((out / "log_history.json").read_text())
    logged = [h for h in history if "reward_mean" in h]
    keys = ("step", "seconds", "reward_mean", "pass_tokens")
    return [{k: h[k] for k in keys} for h in logged]


def trl_config(cfg: dict, steps: int, seed: int, out: Path):
    """TRL 1.12's PPOConfig for our PPOStageConfig, field by field.

    TRL's batch arithmetic: a rollout is per_device_train_batch_size * gradient_accumulation_steps prompts, split
    into num_mini_batches minibatches, each of per_device_train_batch_size-sized micro-batches.
    """
    from trl.experimental.ppo import PPOConfig

    micro = cfg["mini_batch_size"] // cfg["gradient_accumulation_steps"]
    return PPOConfig(
        output_dir=str(out),
        seed=seed,
        total_episodes=steps * cfg["rollout_batch_size"],
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=cfg["rollout_batch_size"] // micro,
        num_mini_batches=cfg["rollout_batch_size"] // cfg["mini_batch_size"],
        local_rollout_forward_batch_size=cfg["rollout_batch_size"],  # one batched rollout forward, as align does
        num_ppo_epochs=cfg["ppo_epochs"],
        learning_rate=cfg["learning_rate"],
        adam_epsilon=cfg["adam_eps"],
        lr_scheduler_type="linear",  # TRL's default: decays to 0 over the run
        warmup_steps=0,
        cliprange=cfg["cliprange"],
        cliprange_value=cfg["cliprange_value"],
        vf_coef=cfg["vf_coef"],
        gamma=cfg["gamma"],
        lam=cfg["lam"],
        kl_coef=cfg["kl_coef"],
        kl_estimator="k1",
        whiten_rewards=cfg["whiten_rewards"],
        missing_eos_penalty=cfg["missing_eos_penalty"],
        response_length=cfg["max_new_tokens"],
        temperature=cfg["temperature"],
        stop_token="eos",  # truncate at the end of turn, which the missing-EOS penalty looks for
        # fair settings for a CPU comparison: fp32, no recomputation, no extra generations, no saving or reports
        bf16=False,
        gradient_checkpointing=False,
        num_sample_generations=0,
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def run_trl(fixture: Path, cfg: dict, out: Path, steps: int, seed: int, scoring: str) -> list[dict]:
    """TRL 1.12's PPOTrainer with a callback timing each step and a wrapper recording the raw reward scores."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOTrainer, ppo_trainer

    prompts = json.loads((fixture / "prompts.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(fixture / "sft_cai")
    tokenizer.padding_side = "left"  # TRL's rollout appends responses after the padded queries
    ids = [
        tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        for p in prompts
    ]
    by_ids = {tuple(i): p for i, p in zip(ids, prompts)}
    data = Dataset.from_dict({"input_ids": ids})
    policy = AutoModelForCausalLM.from_pretrained(fixture / "sft_cai")
    ref = AutoModelForCausalLM.from_pretrained(fixture / "sft_cai")
    reward_model = AutoModelForSequenceClassification.from_pretrained(fixture / "reward", num_labels=1)
    value_dir = fixture / ("reward" if cfg["value_init"] == "reward" else "sft_cai")
    value_model = AutoModelForSequenceClassification.from_pretrained(value_dir, num_labels=1)
    for m in (reward_model, value_model):
        m.config.pad_token_id = tokenizer.pad_token_id

    raw_scores: list[torch.Tensor] = []
    pass_tokens: list[int] = []  # TRL pads every row of a rollout to its longest prompt + longest response
    original = ppo_trainer.get_reward
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id

    def conversation_scores(query_responses: torch.Tensor, context_length: int) -> torch.Tensor:
        """Reward of chat_template(prompt + [assistant: decoded response]), as our RewardTrainer saw pairs."""
        seqs = []
        for row in query_responses.tolist():
            query = tuple(t for t in row[:context_length] if t != pad)
            response = [t for t in row[context_length:] if t != pad]
            if eos in response:
                response = response[: response.index(eos)]
            answer = tokenizer.decode(response, skip_special_tokens=True).strip()  # as align.rl.ppo.PPO.score
            conv = [*by_ids[query], {"role": "assistant", "content": answer}]
            seqs.append(tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"])
        width = max(len(s) for s in seqs)
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
        mask = (torch.arange(width)[None, :] < torch.tensor([len(s) for s in seqs])[:, None]).long()
        return reward_model(input_ids=input_ids, attention_mask=mask).logits[:, 0]

    def get_reward(model, query_responses, pad_token_id, context_length):
        if model is not reward_model:  # the value model: TRL's own code
            return original(model, query_responses, pad_token_id, context_length)
        pass_tokens.append(query_responses.numel())  # the rollout's ids, as each of TRL's passes reads them
        if scoring == "chat":
            score = conversation_scores(query_responses, context_length)
            logits, lengths = None, None
        else:
            logits, score, lengths = original(model, query_responses, pad_token_id, context_length)
        raw_scores.append(score.detach().float().cpu().clone())  # TRL then subtracts the EOS penalty in place
        return logits, score, lengths

    ppo_trainer.get_reward = get_reward

    records: list[dict] = []

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            scores = torch.cat(raw_scores)
            raw_scores.clear()
            records.append(
                {
                    "step": state.global_step,
                    "seconds": now - self.last,
                    "reward_mean": scores.mean().item(),
                    "reward_std": scores.std().item(),
                    "pass_tokens": sum(pass_tokens),
                }
            )
            pass_tokens.clear()
            self.last = now

    trainer = PPOTrainer(
        args=trl_config(cfg, steps, seed, out),
        processing_class=tokenizer,
        model=policy,
        ref_model=ref,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=data,
        eval_dataset=data.select(range(min(8, len(data)))),
        callbacks=[StepTimer()],
    )
    trainer.train()
    return records


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    fixture, out = Path(args.fixture), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((out.parent / "ppo_config.json").read_text())
    start = time.perf_counter()
    if args.side == "align":
        steps = run_align(fixture, cfg, out, args.steps, args.seed, args.value_model)
    else:
        steps = run_trl(fixture, cfg, out, args.steps, args.seed, args.trl_scoring)
    import importlib.metadata as md

    result = {
        "side": args.side,
        "value_model": args.value_model if args.side == "align" else "full",
        "steps": steps,
        "peak_rss_mib": peak_rss_mib(),
        "total_seconds": time.perf_counter() - start,
        "threads": args.threads,
        "versions": {p: md.version(p) for p in ("torch", "transformers", "trl", "accelerate")},
    }
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    s = summarise(result)
    print(
        f"[bench] {args.side} ({result['value_model']} critic): {s['median_s']:.3f} s/step (median), "
        f"peak RSS {s['peak_rss_mib']:.0f} MiB, "
        f"reward {s['reward_first']:+.3f} -> {s['reward_last']:+.3f}, versions {result['versions']}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="PPO steps per side")
    parser.add_argument("--only", choices=["align", "trl"], help="run one side only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)), help="torch threads")
    parser.add_argument("--config", default=str(ROOT / "recipes" / "configs" / "cai_smoke.yaml"))
    parser.add_argument("--fixture", help="the recipe run to use (default: .bench/<config name>)")
    parser.add_argument("--trl-scoring", choices=["chat", "native"], default="chat")
    parser.add_argument(
        "--value-models", default="full", help="align's critics to run, comma-separated: full, lora, shared"
    )
    parser.add_argument("--value-model", default="full", help=argparse.SUPPRESS)  # child process
    parser.add_argument("--torch-index-url", help="where the throwaway env gets torch (e.g. the CPU wheel index)")
    parser.add_argument("--side", choices=["align", "trl"], help=argparse.SUPPRESS)  # child process
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    if args.side:
        child(args)
    else:
        drive(args, overrides)


if __name__ == "__main__":
    main()
