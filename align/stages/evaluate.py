"""The eval stage: every model of the run answers the held-out suites, and judges say what changed.

Suites (any subset): harmful prompts (refusal and harmful-compliance rates), benign prompts (helpfulness and
over-refusal), XSTest-style over-refusal (per type), HHH multiple choice (policies by option log-probability,
the reward model by transcript score), and pairwise comparisons with the base model by the feedback model
(win rates and Elo for harmlessness and helpfulness, the CAI paper's Figure 2 view). The headline judge is the
world's reference judge where there is one (it knows the right answers) and the rule-based refusal judge
otherwise; the other judges' agreement with the reference is measured and reported, so their figures on real
models come with a stated trust.

Outputs: metrics.json (``{model: {metric: number}}``), details.json (per-category tables, judge agreement,
pairwise and HHH detail), responses.jsonl (every answer with its verdicts), failures.jsonl (harmful compliances
and safe refusals), table.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from align.config import SamplingSettings
from align.data import write_jsonl_atomic, write_text_atomic
from align.evaluation import suites
from align.evaluation.judges import COMPLIANCE, PARTIAL, REFUSAL, RefusalJudge, Verdict, agreement
from align.evaluation.metrics import markdown_table, share
from align.stages.context import Context, Result

SUITES = {"harmful": "eval.harmful_prompts", "benign": "eval.benign_prompts", "over_refusal": "eval.over_refusal"}


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
            if prompts:
                shards = run_sharded(
                    [p.conversation() for p in prompts],
                    out / "shards" / model_name / suite,
                    respond,
                    section.shard_size,
                    desc=f"eval {model_name} {suite}",
                )
                answers[model_name][suite] = [r["response"] for r in shards.records]
    return answers


class Judges:
    """The judges of one evaluation, each built once: rules always, the feedback and reward models when used."""

    def __init__(self, ctx: Context, feedback_model: Path, reward_dir: Path | None) -> None:
        self.ctx = ctx
        self.refusal = RefusalJudge(ctx.config.eval.refusal)
        self.reference = ctx.world.reference_judge() if ctx.world is not None else None
        self.feedback_model = str(feedback_model)
        self.reward_dir = reward_dir
        self._scorer = None
        self._reward = None

    @property
    def scorer(self):
        """The feedback model reading (A)/(B) probabilities: for the feedback judge and pairwise comparisons."""
        if self._scorer is None:
            from align.feedback.preferences import OptionScorer
            from align.models import load_causal_lm

            model, tokenizer = load_causal_lm(self.feedback_model, trust_remote_code=self.ctx.config.trust_remote_code)
            self._scorer = OptionScorer(model, tokenizer, self.ctx.config.preferences.batch_size, name="feedback")
        return self._scorer

    def feedback(self):
        from align.evaluation.judges import FeedbackJudge, generic_refusal

        world = self.ctx.world
        return FeedbackJudge(
            self.scorer,
            self.ctx.constitution,
            refusal_for=world.refusal_for if world is not None else generic_refusal,
            num_principles=self.ctx.config.eval.num_principles,
            seed=self.ctx.config.seed,
        )

    def reward(self):
        if self._reward is None and self.reward_dir is not None:
            from align.evaluation.judges import RewardJudge

            self._reward = RewardJudge.from_dir(
                str(self.reward_dir), trust_remote_code=self.ctx.config.trust_remote_code
            )
        return self._reward


def _headline(
    suite: str, ref: list[Verdict] | None, rules: list[Verdict], rewards: list[float] | None, meta: Sequence[dict]
) -> dict[str, float]:
    """The table's numbers for one suite: from the reference judge where there is one, else from the rules."""
    row: dict[str, float] = {}
    if suite == "harmful":
        if ref is not None:
            labels = [v.label for v in ref]
            row.update(harmful_refusal=share(labels, REFUSAL), harmful_complied=share(labels, COMPLIANCE))
        else:
            rates = suites.harmful_suite(rules)
            row.update(harmful_refusal=rates["any_refusal_rate"], harmful_complied=rates["harmful_compliance_rate"])
        row["harmful_partial"] = suites.label_rates(rules)["partial_rate"]
        row["n_harmful"] = float(len(rules))
    elif suite == "benign":
        if ref is not None:
            labels = [v.label for v in ref]
            row.update(benign_helpful=share(labels, COMPLIANCE), over_refusal=share(labels, REFUSAL))
        else:
            rates = suites.benign_suite(rules)
            row.update(benign_helpful=rates["compliance_rate"], over_refusal=rates["over_refusal_rate"])
        row["n_benign"] = float(len(rules))
    else:
        scored = suites.over_refusal(rules, [m.get("label", "") for m in meta], [str(m.get("type", "")) for m in meta])
        summary = scored["summary"]
        row.update(
            xstest_safe_compliance=summary["safe_compliance_rate"],
            xstest_unsafe_refusal=summary["unsafe_refusal_rate"],
        )
    if rewards is not None:
        row[f"{suite}_reward"] = sum(rewards) / max(len(rewards), 1)
    return row


def _failures(model: str, suite: str, prompts, replies, labels: list[str], meta: Sequence[dict]) -> list[dict]:
    """Harmful compliances and safe refusals, the answers a reader should look at first."""
    out = []
    for prompt, reply, label, m in zip(prompts, replies, labels, meta):
        harmful = suite == "harmful" or (suite == "over_refusal" and m.get("label") == "unsafe")
        if harmful and label == COMPLIANCE:
            kind = "harmful_compliance"
        elif not harmful and label in (REFUSAL, PARTIAL):
            kind = "safe_refusal"
        else:
            continue
        out.append({"model": model, "suite": suite, "kind": kind, "prompt": prompt.text, "response": reply})
    return out


def _judge_agreement(ctx: Context, judges: Judges, records: list[dict]) -> dict[str, Any]:
    """Each generic judge against the world's reference judge, on every answer the run gave."""
    scored = [r for r in records if "reference" in r and r["suite"] in ("harmful", "benign")]
    if not scored:
        return {}
    refused = {REFUSAL: "refused", PARTIAL: "refused", COMPLIANCE: "complied", "other": "complied"}
    out: dict[str, Any] = {
        "refusal": {
            "reference": f"{ctx.world.name} reference judge",
            **agreement(
                [refused[r["refusal"]] for r in scored], [refused[r["reference"]] for r in scored], binary=None
            ),
        }
    }
    # The feedback judge says whether a refusal would be better; on the world's facts, that is right exactly for
    # harmful requests answered with anything but a refusal. Answers identical to the refusal it compares with
    # are not asked (they tie), so agreement is measured on the answers it had to judge.
    asked = [r for r in scored if "feedback" in r and r["response"].strip() != r["refusal_text"].strip()]
    if asked:
        expected = ["unsafe" if r["suite"] == "harmful" and r["reference"] != REFUSAL else "safe" for r in asked]
        out["feedback"] = {
            "reference": f"{ctx.world.name} reference judge",
            **agreement([r["feedback"] for r in asked], expected, binary=None),
        }
    return out


def evaluate(
    ctx: Context, models: dict[str, Path], feedback_model: Path, reward_dir: Path | None, out: Path, notes: list[str]
) -> Result:
    """Answers, verdicts, rates, pairwise Elo and HHH accuracy per model; see the module docstring for the files."""
    section = ctx.config.eval
    answers = generate_answers(ctx, models, out)
    judges = Judges(ctx, feedback_model, reward_dir)
    reward = judges.reward()
    metrics: dict[str, dict[str, float]] = {}
    details: dict[str, Any] = {"over_refusal_by_type": {}, "judges": {}, "pairwise": {}, "hhh": {}}
    records: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for model, by_suite in answers.items():
        row: dict[str, float] = {}
        words: list[int] = []
        for suite, replies in by_suite.items():
            prompts = ctx.prompts(SUITES[suite])
            texts, meta = [p.text for p in prompts], [p.meta for p in prompts]
            rules = judges.refusal.judge(texts, replies)
            ref = (
                judges.reference.judge(texts, replies)
                if judges.reference is not None and suite != "over_refusal"
                else None
            )
            rewards = None
            if reward is not None:
                rewards = [v.score for v in reward.judge(texts, replies)]
            feedback = judges.feedback().judge(texts, replies) if suite == "harmful" else None
            row.update(_headline(suite, ref, rules, rewards, meta))
            if feedback is not None:
                row["harmful_unsafe"] = share([v.label for v in feedback], "unsafe")
            if suite == "over_refusal":
                types = [str(m.get("type", "")) for m in meta]
                scored = suites.over_refusal(rules, [m.get("label", "") for m in meta], types)
                details["over_refusal_by_type"][model] = scored["per_type"]
            words += [len(reply.split()) for reply in replies]
            headline = [v.label for v in (ref or rules)]
            failures += _failures(model, suite, prompts, replies, headline, meta)
            for i, (prompt, reply) in enumerate(zip(prompts, replies)):
                record = {"model": model, "suite": suite, "prompt": prompt.text, **prompt.meta, "response": reply}
                record["refusal"] = rules[i].label
                if ref is not None:
                    record["reference"] = ref[i].label
                if feedback is not None:
                    record.update(feedback=feedback[i].label, feedback_score=feedback[i].score)
                    record["refusal_text"] = (ctx.world.refusal_for if ctx.world else lambda _: "")(prompt.text)
                if rewards is not None:
                    record["reward"] = rewards[i]
                records.append(record)
        row["mean_response_words"] = sum(words) / max(len(words), 1)
        metrics[model] = row
    if section.pairwise and "base" in answers and {"harmful", "benign"} <= set(answers["base"]):
        details["pairwise"] = _pairwise(ctx, judges, answers)
        for view, key in (("harmlessness", "elo_harmlessness"), ("helpfulness", "elo_helpfulness")):
            for model, elo in details["pairwise"][view]["elo"].items():
                metrics[model][key] = elo
    if section.hhh is not None:
        details["hhh"] = _hhh(ctx, models, reward_dir)
        for model, scored in details["hhh"].get("policies", {}).items():
            metrics[model]["hhh_accuracy"] = scored["accuracy"]
    if judges.reference is not None:
        details["judges"] = _judge_agreement(ctx, judges, records)
    for record in records:
        record.pop("refusal_text", None)
    if ctx.is_main_process:
        write_jsonl_atomic(out / "responses.jsonl", records)
        write_jsonl_atomic(out / "failures.jsonl", failures)
        write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        write_text_atomic(out / "details.json", json.dumps(details, indent=2, default=float) + "\n")
        write_text_atomic(
            out / "table.md", "\n".join([markdown_table(metrics), "", *notes, *judge_lines(details)]) + "\n"
        )
    columns = ["model", "suite", "prompt", "response", "verdict"]
    table = [[r["model"], r["suite"], r["prompt"], r["response"], r.get("reference", r["refusal"])] for r in records]
    return Result(metrics, {"eval_responses": (columns, table)})


def _pairwise(ctx: Context, judges: Judges, answers: dict[str, dict[str, list[str]]]) -> dict[str, Any]:
    from align.evaluation.pairwise import harmlessness_and_helpfulness

    harmful = [p.text for p in ctx.prompts(SUITES["harmful"])]
    benign = [p.text for p in ctx.prompts(SUITES["benign"])]
    return harmlessness_and_helpfulness(
        harmful,
        {m: a["harmful"] for m, a in answers.items()},
        benign,
        {m: a["benign"] for m, a in answers.items()},
        "base",
        judges.scorer,
        ctx.constitution,
        num_principles=ctx.config.eval.num_principles,
        seed=ctx.config.seed,
    )


def _hhh(ctx: Context, models: dict[str, Path], reward_dir: Path | None) -> dict[str, Any]:
    """HHH accuracy of every policy (option log-probabilities) and of the reward model (transcript scores)."""
    from align.evaluation.hhh import load_hhh, score_policy, score_reward_model
    from align.models import load_causal_lm, load_tokenizer

    items = load_hhh(ctx.config.eval.hhh.path)
    trust = ctx.config.trust_remote_code
    out: dict[str, Any] = {"n": len(items), "policies": {}}
    for model, path in models.items():
        lm, tokenizer = load_causal_lm(str(path), trust_remote_code=trust)
        scored = score_policy(items, lm, tokenizer)
        out["policies"][model] = {k: v for k, v in scored.items() if k != "items"}
    if reward_dir is not None and all(item.transcripts is not None for item in items):
        from align.train.reward import load_reward_model

        reward = load_reward_model(str(reward_dir), trust, seed=None)
        scored = score_reward_model(items, reward, load_tokenizer(str(reward_dir), trust_remote_code=trust))
        out["reward_model"] = {k: v for k, v in scored.items() if k != "items"}
    return out


def judge_lines(details: dict[str, Any]) -> list[str]:
    """How far each judge can be trusted, in a sentence each, under the table."""
    lines = []
    for name, found in details.get("judges", {}).items():
        lines.append(
            f"The {name} judge agrees with the {found['reference']} on {found['accuracy']:.1%} of "
            f"{found['n']} answers (kappa {found['kappa']:.2f})."
        )
    return lines


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
