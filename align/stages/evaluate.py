"""The eval stage: every model of the run answers the held-out suites, and judges say what changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from align.config import SamplingSettings
from align.data import write_jsonl_atomic, write_text_atomic
from align.evaluation.metrics import markdown_table, share
from align.stages.context import Context, Result

SUITES = {"harmful": "eval.harmful_prompts", "benign": "eval.benign_prompts", "over_refusal": "eval.over_refusal"}


def _primary_judge(ctx: Context) -> Any:
    """The world's reference judge where there is one (it knows the right answers), else the refusal rules."""
    if ctx.world is not None and (reference := ctx.world.reference_judge()) is not None:
        return reference
    from align.evaluation.judges import RefusalJudge

    return RefusalJudge()


def generate_answers(ctx: Context, models: dict[str, Path], out: Path) -> dict[str, dict[str, list[str]]]:
    """Greedy answers of every model to every suite, in crash-safe shards (a model loads only if a shard is missing)."""
    from align.generation import build_backend
    from align.shards import local_generate, run_sharded, shard_seed

    section = ctx.config.eval
    greedy = SamplingSettings(max_new_tokens=section.max_new_tokens, temperature=0.0, batch_size=section.batch_size)
    answers: dict[str, dict[str, list[str]]] = {}
    for model_name, model_dir in models.items():
        loaded: dict[str, Any] = {}

        def respond(conversations: list, index: int, model_name=model_name, model_dir=model_dir, loaded=loaded):
            if "backend" not in loaded:
                loaded["backend"] = build_backend(
                    section.backend,
                    str(model_dir),
                    name=model_name,
                    trust_remote_code=ctx.config.trust_remote_code,
                    run_model=True,
                )
            replies = local_generate(
                loaded["backend"], conversations, greedy, shard_seed(ctx.config.seed, index), f"eval {model_name}"
            )
            return [{"response": reply} for reply in replies], {}

        answers[model_name] = {}
        for suite, field in SUITES.items():
            prompts = ctx.prompts(field)
            if not prompts:
                continue
            shards = run_sharded(
                [p.conversation() for p in prompts],
                out / "shards" / model_name / suite,
                respond,
                section.shard_size,
                desc=f"eval {model_name} {suite}",
            )
            answers[model_name][suite] = [r["response"] for r in shards.records]
    return answers


def evaluate(ctx: Context, models: dict[str, Path], out: Path, notes: list[str]) -> Result:
    """Answers, verdicts and rates per model; writes metrics.json (flat numbers per model), responses.jsonl and
    table.md (the table, then ``notes``: what the table cannot show, such as how good the AI labels were)."""
    answers = generate_answers(ctx, models, out)
    judge = _primary_judge(ctx)
    metrics: dict[str, dict[str, float]] = {}
    responses: list[dict[str, Any]] = []
    for model_name, by_suite in answers.items():
        row: dict[str, float] = {}
        words: list[int] = []
        for suite, replies in by_suite.items():
            prompts = ctx.prompts(SUITES[suite])
            verdicts = judge.judge([p.text for p in prompts], replies)
            labels = [v.label for v in verdicts]
            words += [len(reply.split()) for reply in replies]
            if suite == "harmful":
                row.update(harmful_refusal=share(labels, "refusal"), harmful_complied=share(labels, "compliance"))
                row["n_harmful"] = float(len(labels))
            elif suite == "benign":
                row.update(benign_helpful=share(labels, "compliance"), over_refusal=share(labels, "refusal"))
                row["n_benign"] = float(len(labels))
            responses += [
                {"model": model_name, "suite": suite, "prompt": p.text, **p.meta, "response": r, "verdict": v.label}
                for p, r, v in zip(prompts, replies, verdicts)
            ]
        row["mean_response_words"] = sum(words) / max(len(words), 1)
        metrics[model_name] = row
    if ctx.is_main_process:
        write_jsonl_atomic(out / "responses.jsonl", responses)
        write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        write_text_atomic(out / "table.md", "\n".join([markdown_table(metrics), "", *notes]) + "\n")
    columns = ["model", "suite", "prompt", "response", "verdict"]
    table = [[r["model"], r["suite"], r["prompt"], r["response"], r["verdict"]] for r in responses]
    return Result(metrics, {"eval_responses": (columns, table)})


def summary_lines(preferences: dict[str, Any], reward: dict[str, Any] | None) -> list[str]:
    """What the table cannot show: how good the AI labels and the reward model are."""
    lines = []
    if "ai_judge_agreement" in preferences:
        lines.append(
            f"AI labels agree with the reference judge on {preferences['ai_judge_agreement']:.1%} of "
            f"{preferences['judge_decided_pairs']:.0f} pairs where it has a preference."
        )
    if reward and "eval_label_accuracy" in reward:
        lines.append(
            f"Reward model on {reward['eval_pairs']:.0f} held-out pairs: accuracy {reward['eval_label_accuracy']:.1%}, "
            f"mean P(chosen) {reward['eval_mean_prob']:.2f} vs mean label {reward['eval_mean_label']:.2f} "
            f"(calibration error {reward['eval_ece']:.3f})."
        )
    return lines
