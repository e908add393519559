"""Constitutional AI, end to end (Bai et al. 2022), one block per stage.

    accelerate launch recipes/cai.py --config recipes/configs/cai_tiny.yaml [--section.field=value ...]
    python recipes/cai.py --config recipes/configs/cai_tiny.yaml --force dpo

sft -> critique_revise -> sft_cai -> preferences -> reward -> dpo | ppo | grpo | rloo -> eval. Each stage writes
runs/<name>/<stage>/ with a manifest; a stage already done with the same inputs is skipped, and
--force STAGE redoes it and all that follows. Critique-and-revise reuses the samples of principles that
did not change since the last run, so a constitution edit regenerates only what it invalidates.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

import torch

from align.config import ConfigError, RecipeConfig, load_config, to_dict
from align.constitution import load_constitution
from align.data import DataError, limit_prompt_length, load_prompts, read_jsonl, write_jsonl_atomic
from align.pipeline import Run, write_json_atomic

STAGES = ["sft", "critique_revise", "sft_cai", "preferences", "reward", "dpo", "ppo", "grpo", "rloo", "eval"]


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML recipe config (see recipes/configs/)")
    parser.add_argument("--force", action="append", default=[], choices=STAGES, help="redo STAGE and after")
    parser.add_argument("--until", choices=STAGES, help="stop after STAGE (the stages after it are not started)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs, warnings and bars too")
    return parser.parse_known_args(argv)


def setup_tracking(cfg: RecipeConfig, run_dir: Path) -> None:
    """W&B goes offline unless the user has configured an account, so the demo never needs a network."""
    if cfg.report_to != "wandb":
        return
    os.environ.setdefault("WANDB_DIR", str(run_dir))
    os.environ.setdefault("WANDB_RUN_GROUP", f"{cfg.run_name}")
    os.environ.setdefault("WANDB_PROJECT", "align")
    configured = os.environ.get("WANDB_API_KEY") or (Path.home() / ".netrc").exists()
    if not configured:
        os.environ.setdefault("WANDB_MODE", "offline")


def check_model_paths(cfg: RecipeConfig, config_file: str) -> None:
    """Fail before any stage runs on a model that cannot work: a local path that is not there, or a tokenizer
    without a chat template (every prompt is rendered with it). Hub ids are left to ``from_pretrained``."""
    fields = {
        "base_model": None if cfg.base_model == "tiny" else cfg.base_model,
        "critique_revise.feedback_model": cfg.critique_revise.feedback_model,
        "preferences.feedback_model": cfg.preferences.feedback_model,
    }
    for name, path in fields.items():
        if path is None:
            continue
        local = Path(os.path.expanduser(path))
        if not local.exists():
            if path.startswith(("/", ".", "~")) or path.count("/") > 1:  # else a hub id ("org/name")
                raise ConfigError(f"{config_file}: {name}: model path {path} does not exist")
            continue
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(local), trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError) as err:
            raise ConfigError(f"{config_file}: {name}: cannot load a tokenizer from {path}: {err}") from None
        if tokenizer.chat_template is None:
            raise ConfigError(
                f"{config_file}: {name}: the tokenizer of {path} has no chat template; add one "
                "(tokenizer.chat_template in tokenizer_config.json) or use a chat/instruct model"
            )


def load_model(path: str, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code)
    return model, tokenizer


def pick_prompts(section, split, rng: random.Random) -> list[str]:
    """A stage's prompts: a seeded sample of the tiny world's training requests (harmful and benign), or
    the first ``num_prompts`` of a local file / hub dataset."""
    if section.prompts == "tiny":
        pool = [r.text for r in split.train]
        return rng.sample(pool, k=min(section.num_prompts or len(pool), len(pool)))
    return load_prompts(section.prompts, split=section.split, column=section.prompt_column)[: section.num_prompts]


def helpfulness_pairs(pc, split, rng: random.Random) -> list[dict]:
    """Helpful answer over refusal, label 1: the helpfulness comparisons RL-CAI mixes into its preferences.

    In the tiny world they come from the world itself (its helpful answer and its refusal for benign training
    requests), the stand-in for human helpfulness labels; otherwise from a file or dataset of pairs.
    """
    from align.data import load_preference_pairs
    from align.feedback import prompts as templates

    if pc.helpfulness is None:
        return []
    if pc.helpfulness == "tiny":
        from align.tiny.world import helpful_answer, refusal

        pool = [r for r in split.train if not r.harmful]
        requests = rng.sample(pool, k=min(pc.num_helpfulness or len(pool), len(pool)))
        rows = [
            {
                "prompt": [templates.user(r.text)],
                "chosen": [templates.assistant(helpful_answer(r.verb))],
                "rejected": [templates.assistant(refusal(r.verb))],
            }
            for r in requests
        ]
    else:
        rows = load_preference_pairs(pc.helpfulness, split=pc.split, limit=pc.num_helpfulness)
    return [{**row, "label": 1.0, "principle_ids": [], "source": "helpfulness"} for row in rows]


def label_with_ai_feedback(
    cfg: RecipeConfig, constitution, sft, sft_cai, split, work_dir: Path
) -> tuple[list, list, dict]:
    """RL-CAI labels: two responses per prompt, judged principle by principle by the feedback model.

    Sampling and labelling go in crash-safe shards under ``work_dir/shards``.
    """
    from align.feedback.preferences import OptionScorer, ai_feedback_preferences_sharded
    from align.generation import TransformersBackend, build_backend, generation_metrics

    pc = cfg.preferences
    texts = pick_prompts(pc, split, random.Random(cfg.seed + 1))  # harmful and benign: labels must reward help
    trust = cfg.trust_remote_code
    sl_cai = build_backend(
        pc.backend, str(sft_cai.path), name=f"sl_cai@{sft_cai.output_id}", trust_remote_code=trust, run_model=True
    )
    helpful = build_backend(
        pc.backend, str(sft.path), name=f"sft@{sft.output_id}", trust_remote_code=trust, run_model=True
    )
    if pc.pair_from == "sl_cai" and pc.sampling.temperature == 0:
        raise ConfigError("preferences.sampling.temperature: 0 (greedy) gives two identical responses per prompt")
    first = helpful if pc.pair_from == "sft_and_sl_cai" else sl_cai
    # The feedback model is loaded once and serves both reasoning (chain of thought) and scoring.
    feedback = build_backend(pc.backend, pc.feedback_model, trust_remote_code=trust) if pc.feedback_model else helpful
    # Scoring reads logits, so it needs the transformers model even when another engine generates.
    scored = (
        (feedback.model, feedback.tokenizer)
        if isinstance(feedback, TransformersBackend)
        else load_model(pc.feedback_model or str(sft.path), trust)
    )
    scorer = OptionScorer(*scored, pc.batch_size, name=feedback.name)
    texts, limits = limit_prompt_length(
        texts, scored[1], pc.prompt_limits.max_prompt_tokens, pc.prompt_limits.overlong, "preferences.prompts"
    )
    rows, labels, metrics = ai_feedback_preferences_sharded(
        texts, first, sl_cai, scorer, constitution, pc, cfg.seed, work_dir / "shards", reasoner=feedback
    )
    metrics.update(limits)
    metrics["label_seconds"] = round(scorer.seconds, 2)
    metrics.update(generation_metrics([first, sl_cai, feedback]))
    metrics["mean_label"] = sum(r["label"] for r in rows) / max(len(rows), 1)
    if split is not None:  # the reference judge checks the AI labels (evaluation only, never training)
        from align.tiny.judge import prefers_first

        by_text = {r.text: r for r in split.train}
        verdicts = [
            (prefers_first(by_text[x["prompt"]], x["response_1"], x["response_2"]), x["p_first_better"] > 0.5)
            for x in labels
        ]
        decided = [(judge, ai) for judge, ai in verdicts if judge is not None]
        metrics["judge_decided_pairs"] = len(decided)
        metrics["ai_judge_agreement"] = sum(j == a for j, a in decided) / max(len(decided), 1)
    return rows, labels, metrics


def summary_lines(preferences: dict, reward: dict | None) -> list[str]:
    """What the table cannot show: how good the AI labels and the reward model are."""
    lines = []
    if "ai_judge_agreement" in preferences:
        lines.append(
            f"AI labels agree with the reference judge on {preferences['ai_judge_agreement']:.1%} of "
            f"{preferences['judge_decided_pairs']} pairs where it has a preference."
        )
    if reward and "eval_label_accuracy" in reward:
        lines.append(
            f"Reward model on {reward['eval_pairs']:.0f} held-out pairs: accuracy {reward['eval_label_accuracy']:.1%}, "
            f"mean P(chosen) {reward['eval_mean_prob']:.2f} vs mean label {reward['eval_mean_label']:.2f} "
            f"(calibration error {reward['eval_ece']:.3f})."
        )
    return lines


def main(argv: list[str] | None = None) -> dict:
    args, overrides = parse_args(argv)
    cfg = load_config(RecipeConfig, args.config, overrides)
    check_model_paths(cfg, args.config)
    constitution = load_constitution(cfg.constitution)
    tiny = cfg.base_model == "tiny"
    # The tiny base model is "pretrained" on demonstrations of one constitution; pinning it lets the
    # recipe's constitution be edited without retraining the base model.
    base_constitution = load_constitution(cfg.tiny.constitution) if tiny and cfg.tiny.constitution else constitution
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    root = Path(cfg.output_dir) / cfg.run_name
    from align import console
    from align.distributed import process_state

    console.start(root, verbose=args.verbose, rank=process_state().process_index)  # the full log: root/logs/
    tracker = None
    if cfg.report_to == "wandb":
        from align.tracking import WandbTracker

        setup_tracking(cfg, root)
        tracker = WandbTracker(root, cfg.run_name, to_dict(cfg), constitution, upload_models=cfg.wandb_upload_models)
    plan = ["sft", "critique_revise", "sft_cai", "preferences", *(["reward"] if cfg.reward else []), cfg.optimizer]
    run = Run(root, force=set(args.force), order=STAGES, tracker=tracker, until=args.until, plan=[*plan, "eval"])
    if run.state.is_main_process:  # what the run was aligned to, for reports and `align runs compare`
        write_json_atomic(run.root / "constitution.json", {**constitution.to_dict(), "identity": constitution.identity})
    print(f"[align] constitution {constitution.identity}; run dir {run.root}", flush=True)

    from align.tiny.base import cache_key, split_for, train_base_model

    split = split_for(cfg.tiny) if tiny else None

    # 1. SFT: a helpful(-only) model to start from. In the tiny world it is trained from scratch.
    with run.stage(
        "sft",
        config={"sft": to_dict(cfg.sft), "tiny": to_dict(cfg.tiny) if tiny else None},
        inputs={
            "base_model": cfg.base_model,
            # the tiny world's code and settings shape the base model, so they are inputs too
            "tiny_key": cache_key(cfg.tiny, cfg.sft, base_constitution, cfg.seed, cfg.critique_revise.use_few_shot)
            if tiny
            else None,
        },
    ) as sft:
        if not sft.done:
            if not tiny:
                raise ConfigError(f"{args.config}: base_model: only 'tiny' has a base SFT corpus in this version")
            sft.metrics = train_base_model(
                cfg.tiny,
                cfg.sft,
                base_constitution,
                sft.work_dir,
                seed=cfg.seed,
                few_shot=cfg.critique_revise.use_few_shot,
                report_to=cfg.report_to,
            )

    # 2. Critique and revise (SL-CAI): responses to red-team prompts, critiqued and revised per principle.
    cr = cfg.critique_revise
    with run.stage(
        "critique_revise",
        config=to_dict(cr),
        inputs={
            "model": sft.output_id,
            "constitution": constitution.identity,
            "prompts": [cr.red_team_prompts],
        },
    ) as crs:
        if not crs.done:
            from align.feedback.critique_revise import critique_and_revise_sharded, preference_view, sft_view
            from align.generation import build_backend, generation_metrics

            rng = random.Random(cfg.seed)

            def tiny_sample(label: str, n: int | None) -> list[str]:
                pool = split.prompts("train", label)
                return rng.sample(pool, k=min(n or len(pool), len(pool)))

            if cr.red_team_prompts == "tiny":
                red = tiny_sample("harmful", cr.num_red_team)
            else:
                red = load_prompts(cr.red_team_prompts, split=cr.split, column=cr.prompt_column)[: cr.num_red_team]
            if cr.helpful_prompts == "tiny":
                helpful = tiny_sample("benign", cr.num_helpful)
            else:
                helpful = load_prompts(cr.helpful_prompts, split=cr.split, column=cr.prompt_column)[: cr.num_helpful]
            # The stage's output id names the exact weights, so samples are never reused across retrained models.
            trust = cfg.trust_remote_code
            name = f"{run.root}/sft@{sft.output_id}"
            policy = build_backend(cr.backend, str(sft.path), name=name, trust_remote_code=trust, run_model=True)
            feedback = (
                build_backend(cr.backend, cr.feedback_model, trust_remote_code=trust) if cr.feedback_model else policy
            )
            # Samples of the previous run whose principles did not change are reused, unless forced.
            previous_file = crs.path / "samples.jsonl"
            reuse = "critique_revise" not in run.force and previous_file.exists()
            previous = read_jsonl(previous_file) if reuse else []
            lim = cr.prompt_limits
            red, red_limits = limit_prompt_length(
                red, policy.tokenizer, lim.max_prompt_tokens, lim.overlong, "critique_revise.red_team_prompts"
            )
            helpful, helpful_limits = limit_prompt_length(
                helpful, policy.tokenizer, lim.max_prompt_tokens, lim.overlong, "critique_revise.helpful_prompts"
            )
            # in crash-safe shards: a killed run keeps finished shards and generates only the missing ones
            records, counts = critique_and_revise_sharded(
                policy, feedback, constitution, red, helpful, cr, cfg.seed, crs.work_dir / "shards", previous
            )
            counts.update({k: red_limits[k] + helpful_limits[k] for k in red_limits})
            earlier = counts["regenerated_earlier"]  # in shards an interrupted attempt had finished
            note = f" ({earlier} of them by an earlier attempt)" if earlier else ""
            reused, regenerated = counts["reused"], counts["regenerated"]
            print(f"[align] critique_revise: reused {reused} samples, regenerated {regenerated}{note}", flush=True)
            if run.state.is_main_process:
                write_jsonl_atomic(crs.work_dir / "samples.jsonl", records)
                write_jsonl_atomic(crs.work_dir / "sft.jsonl", sft_view(records))
                write_jsonl_atomic(crs.work_dir / "preferences.jsonl", preference_view(records))
            crs.metrics = {
                "red_team": len(red),
                "helpful": len(helpful),
                "preference_pairs": len(preference_view(records)),
                **counts,
                **generation_metrics([policy, feedback]),
            }
            crs.tables["samples"] = (
                ["prompt", "initial_response", "round", "principle", "critique", "revision"],
                [
                    [
                        r["prompt"],
                        r["initial_response"],
                        k + 1,
                        step["principle_id"],
                        step["critique"],
                        step["revision"],
                    ]
                    for r in records
                    for k, step in enumerate(r["rounds"])
                ],
            )

    # 3. SFT on the revisions (and on helpful responses, so the model does not learn to refuse everything).
    with run.stage("sft_cai", config=to_dict(cfg.sft_cai), inputs={"data": crs.output_id}) as sft_cai:
        if not sft_cai.done:
            from datasets import Dataset

            from align.train.sft import train_sft

            model, tokenizer = load_model(str(sft.path), cfg.trust_remote_code)
            data = Dataset.from_list(read_jsonl(crs.path / "sft.jsonl"))
            sft_cai.metrics = train_sft(
                model,
                tokenizer,
                data,
                cfg.sft_cai,
                str(sft_cai.work_dir),
                seed=cfg.seed,
                report_to=cfg.report_to,
                run_name="sft_cai",
            )

    # 4. Preferences: revision-vs-original pairs, or RL-CAI labels from the feedback model (AI feedback).
    pc = cfg.preferences
    with run.stage(
        "preferences",
        config=to_dict(pc),
        inputs={
            "samples": crs.output_id,
            "sl_cai": sft_cai.output_id,
            "sft": sft.output_id,
            "constitution": constitution.identity,
        },
    ) as prefs:
        if not prefs.done:
            if pc.mode == "revision_pairs":
                rows = [{**r, "label": 1.0} for r in read_jsonl(crs.path / "preferences.jsonl")]
                prefs.metrics = {"pairs": len(rows)}
            else:
                rows, labels, prefs.metrics = label_with_ai_feedback(
                    cfg, constitution, sft, sft_cai, split, prefs.work_dir
                )
                if run.state.is_main_process:
                    write_jsonl_atomic(prefs.work_dir / "labels.jsonl", labels)
            helpfulness = helpfulness_pairs(pc, split, random.Random(cfg.seed + 3))
            rows = rows + helpfulness
            prefs.metrics["helpfulness_pairs"] = len(helpfulness)
            if not rows:
                raise DataError(f"preferences: no preference pairs to train on (mode {pc.mode})")
            if run.state.is_main_process:
                write_jsonl_atomic(prefs.work_dir / "preferences.jsonl", rows)
            prefs.tables["preference_pairs"] = (
                ["prompt", "chosen", "rejected", "label", "principles"],
                [
                    [
                        r["prompt"][-1]["content"],
                        r["chosen"][-1]["content"],
                        r["rejected"][-1]["content"],
                        r["label"],
                        ", ".join(r.get("principle_ids", [])),
                    ]
                    for r in rows
                ],
            )

    # 5. Reward model: Bradley-Terry on the (soft) preference labels; held-out accuracy and calibration.
    rw = None
    if cfg.reward is not None:
        with run.stage(
            "reward", config=to_dict(cfg.reward), inputs={"preferences": prefs.output_id, "init": sft_cai.output_id}
        ) as rw:
            if not rw.done:
                from datasets import Dataset

                from align.train.reward import load_reward_model, train_reward

                rows = [
                    {k: r[k] for k in ("prompt", "chosen", "rejected", "label")}
                    for r in read_jsonl(prefs.path / "preferences.jsonl")
                ]
                random.Random(cfg.seed).shuffle(rows)
                n_eval = max(1, round(cfg.reward.eval_fraction * len(rows)))
                from transformers import AutoTokenizer

                model = load_reward_model(str(sft_cai.path), cfg.trust_remote_code, seed=cfg.seed)
                tokenizer = AutoTokenizer.from_pretrained(str(sft_cai.path), trust_remote_code=cfg.trust_remote_code)
                rw.metrics = train_reward(
                    model,
                    tokenizer,
                    Dataset.from_list(rows[n_eval:]),
                    Dataset.from_list(rows[:n_eval]),
                    cfg.reward,
                    str(rw.work_dir),
                    seed=cfg.seed,
                    report_to=cfg.report_to,
                    run_name="reward",
                )

    # 6. Optimisation, from the SL-CAI model: DPO on the preference pairs, or PPO against the reward model.
    if cfg.optimizer == "dpo":
        with run.stage(
            "dpo", config=to_dict(cfg.dpo), inputs={"model": sft_cai.output_id, "preferences": prefs.output_id}
        ) as tuned:
            if not tuned.done:
                from datasets import Dataset

                from align.train.dpo import train_dpo

                model, tokenizer = load_model(str(sft_cai.path), cfg.trust_remote_code)
                pairs = [
                    {k: r[k] for k in ("prompt", "chosen", "rejected")}
                    for r in read_jsonl(prefs.path / "preferences.jsonl")
                ]
                tuned.metrics = train_dpo(
                    model,
                    tokenizer,
                    Dataset.from_list(pairs),
                    cfg.dpo,
                    str(tuned.work_dir),
                    seed=cfg.seed,
                    report_to=cfg.report_to,
                    run_name="dpo",
                )
    else:  # online RL against the reward model: our PPO, or TRL's GRPO / RLOO
        if rw is None:
            raise ConfigError(f"{args.config}: optimizer: {cfg.optimizer} needs a reward model; add a reward: section")
        section = getattr(cfg, cfg.optimizer)
        with run.stage(
            cfg.optimizer, config=to_dict(section), inputs={"model": sft_cai.output_id, "reward": rw.output_id}
        ) as tuned:
            if not tuned.done:
                from align.feedback import prompts as templates

                policy, tokenizer = load_model(str(sft_cai.path), cfg.trust_remote_code)
                texts = pick_prompts(section, split, random.Random(cfg.seed + 2))
                conversations = [[templates.user(t)] for t in texts]
                if cfg.optimizer == "ppo":
                    from transformers import AutoTokenizer

                    from align.rl import train_ppo
                    from align.train.reward import load_reward_model

                    reward_model = load_reward_model(str(rw.path), cfg.trust_remote_code, seed=cfg.seed)
                    reward_tokenizer = AutoTokenizer.from_pretrained(
                        str(rw.path), trust_remote_code=cfg.trust_remote_code
                    )
                    # Checkpoints go to work_dir/checkpoints, which the pipeline keeps when the stage dies:
                    # the same command resumes from the newest one.
                    tuned.metrics = train_ppo(
                        policy,
                        tokenizer,
                        reward_model,
                        conversations,
                        cfg.ppo,
                        str(tuned.work_dir),
                        seed=cfg.seed,
                        reward_tokenizer=reward_tokenizer,
                        report_to=cfg.report_to,
                    )
                else:
                    from datasets import Dataset

                    from align.train.grpo import train_online

                    tuned.metrics = train_online(
                        policy,
                        tokenizer,
                        Dataset.from_list([{"prompt": c} for c in conversations]),
                        str(rw.path),
                        section,
                        str(tuned.work_dir),
                        seed=cfg.seed,
                        report_to=cfg.report_to,
                        run_name=cfg.optimizer,
                        trust_remote_code=cfg.trust_remote_code,
                    )

    # 7. Evaluation on held-out requests: refusal of harmful ones, help on benign ones, before and after.
    models = {"base": sft, "sft_cai": sft_cai, cfg.optimizer: tuned}
    inputs = {k: s.output_id for k, s in models.items()}
    inputs.update(preferences=prefs.output_id, reward=rw.output_id if rw else None)
    with run.stage("eval", config=to_dict(cfg.eval), inputs=inputs) as ev:
        if not ev.done:
            from align.config import SamplingSettings
            from align.evaluation.metrics import markdown_table, score
            from align.feedback import prompts
            from align.generation import build_backend, generation_metrics
            from align.shards import run_sharded, shard_seed

            greedy = SamplingSettings(
                max_new_tokens=cfg.eval.max_new_tokens, temperature=0.0, batch_size=cfg.eval.batch_size
            )
            metrics, responses, throughput = {}, [], {}
            for key, stage in models.items():
                loaded: dict = {}  # the model is loaded only if a shard of it is still missing

                def respond(texts: list[str], index: int, key=key, stage=stage, loaded=loaded) -> tuple[list, dict]:
                    if not loaded:
                        loaded["b"] = build_backend(
                            cfg.eval.backend,
                            str(stage.path),
                            name=key,
                            trust_remote_code=cfg.trust_remote_code,
                            run_model=True,
                        )
                    convs = [[prompts.user(t)] for t in texts]
                    replies = loaded["b"].generate(convs, greedy, shard_seed(cfg.seed, index), f"eval {key}")
                    return [{"response": a} for a in replies], {}

                texts = [r.text for r in split.eval]
                shards = run_sharded(
                    texts, ev.work_dir / "shards" / key, respond, cfg.eval.shard_size, desc=f"eval {key}"
                )
                replies = [x["response"] for x in shards.records]
                metrics[key] = score(split.eval, replies)
                throughput[key] = generation_metrics([loaded["b"]] if loaded else [])  # 0 if all reused
                responses += [
                    {"model": key, "prompt": r.text, "label": r.label, "response": a}
                    for r, a in zip(split.eval, replies)
                ]
            ev.tables["eval_responses"] = (
                ["model", "prompt", "label", "response"],
                [[r["model"], r["prompt"], r["label"], r["response"]] for r in responses],
            )
            if run.state.is_main_process:
                write_jsonl_atomic(ev.work_dir / "responses.jsonl", responses)
                (ev.work_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
                notes = summary_lines(prefs.metrics, rw.metrics if rw else None)
                (ev.work_dir / "table.md").write_text("\n".join([markdown_table(metrics), "", *notes]) + "\n")
            # the manifest gets each model's generation throughput too; metrics.json and the table stay scores only
            ev.metrics = {key: {**m, **throughput[key]} for key, m in metrics.items()}

    table = (ev.path / "table.md").read_text()
    if run.state.is_main_process:
        from align.report import write_report

        report = write_report(run.root)
        print(f"\nHeld-out evaluation ({constitution.identity}):\n{table}", flush=True)
        print(f"Report: {report} (and report.html)", flush=True)
    return json.loads((ev.path / "metrics.json").read_text())


if __name__ == "__main__":
    from align.console import entry_point

    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    sys.exit(entry_point(main))  # user errors: exit 2 without a traceback; the process group torn down
