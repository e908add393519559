"""The closed loop's rounds (``red_team.rounds``), called by recipes/cai.py after the chain's first pass.

Each round is the chain after the base model again, under ``round<k>/``, on the prompts the red team found.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from align import stages
from align.config import PromptSource, RecipeConfig, to_dict
from align.data import read_jsonl
from align.pipeline import Run, Stage
from align.stages.evaluate import summary_lines

OPTIMIZERS = ("dpo", "ppo", "grpo", "rloo")
# Where a round adds the attacks that worked: critiqued and revised, labelled, and (online RL) rolled out on.
ATTACKED_SOURCES = ("critique_revise.red_team_prompts", "preferences.prompts", *(f"{o}.prompts" for o in OPTIMIZERS))


def red_team_config(cfg: RecipeConfig) -> dict:
    """The red_team stage's settings without the loop's: adding a round must not redo the attacks already made."""
    loop = ("rounds", "helpful_prompts", "adopt", "candidates", "max_new_principles", "draft_principles")
    return {k: v for k, v in to_dict(cfg.red_team).items() if k not in loop}


class Chain(NamedTuple):
    """The stages of one pass of the chain after the base model (round 0's, or a loop round's)."""

    revised: Stage
    sl_cai: Stage
    prefs: Stage
    rw: Stage | None
    tuned: Stage


def train_chain(
    run: Run, ctx: stages.Context, sft: Stage, prefix: str = "", earlier_samples: Sequence[Path] = ()
) -> Chain:
    """critique_revise -> sft_cai -> preferences -> reward -> optimiser, each a stage ``<prefix><name>``.

    Critique-and-revise reuses the samples of ``earlier_samples`` files (the round before) and of its own last run
    whose principles did not change, unless the stage is forced; so a constitution edit or new prompts regenerate
    only what they invalidate.
    """
    cfg, constitution = ctx.config, ctx.constitution
    revise_inputs = {
        "model": sft.output_id,
        "constitution": constitution.identity,
        "red_team": ctx.fingerprint("critique_revise.red_team_prompts"),
        "helpful": ctx.fingerprint("critique_revise.helpful_prompts"),
    }
    with run.stage(prefix + "critique_revise", config=to_dict(cfg.critique_revise), inputs=revise_inputs) as revised:
        if not revised.done:
            files = [*earlier_samples, revised.path / "samples.jsonl"]
            reuse = revised.name not in run.force
            previous = [row for f in files if reuse and f.exists() for row in read_jsonl(f)]
            revised.record(stages.critique_revise(ctx, sft.path, sft.model_name, revised.work_dir, previous))

    # SFT on the revisions (and on helpful answers, so the model does not learn to refuse everything)
    with run.stage(prefix + "sft_cai", config=to_dict(cfg.sft_cai), inputs={"data": revised.output_id}) as sl_cai:
        if not sl_cai.done:
            sl_cai.record(stages.sft_cai(ctx, sft.path, revised.path, sl_cai.work_dir))

    # revision-vs-original pairs, or RL-CAI labels from the feedback model (AI feedback)
    pref_inputs = {
        "samples": revised.output_id,
        "sl_cai": sl_cai.output_id,
        "sft": sft.output_id,
        "constitution": constitution.identity,
        "prompts": ctx.fingerprint("preferences.prompts"),
        "helpfulness": ctx.fingerprint("preferences.helpfulness"),
    }
    with run.stage(prefix + "preferences", config=to_dict(cfg.preferences), inputs=pref_inputs) as prefs:
        if not prefs.done:
            helpful, sl = (sft.path, sft.model_name), (sl_cai.path, sl_cai.model_name)
            prefs.record(stages.preferences(ctx, helpful, sl, revised.path, prefs.work_dir))

    # Bradley-Terry on the (soft) preference labels; held-out accuracy and calibration
    rw = None
    if cfg.reward is not None:
        reward_inputs = {"preferences": prefs.output_id, "init": sl_cai.output_id}
        with run.stage(prefix + "reward", config=to_dict(cfg.reward), inputs=reward_inputs) as rw:
            if not rw.done:
                rw.record(stages.reward(ctx, prefs.path, sl_cai.path, rw.work_dir))

    # from the SL-CAI model: DPO on the pairs, or PPO / GRPO / RLOO against the reward model
    tuned_inputs = {
        "model": sl_cai.output_id,
        "preferences": prefs.output_id,
        "reward": rw.output_id if rw and cfg.optimizer != "dpo" else None,
        "prompts": ctx.fingerprint(f"{cfg.optimizer}.prompts"),
    }
    section = to_dict(getattr(cfg, cfg.optimizer))
    with run.stage(prefix + cfg.optimizer, config=section, inputs=tuned_inputs) as tuned:
        if not tuned.done:
            tuned.record(stages.optimise(ctx, sl_cai.path, prefs.path, rw.path if rw else None, tuned.work_dir))
    return Chain(revised, sl_cai, prefs, rw, tuned)


def red_team_stage(
    run: Run, ctx: stages.Context, sft: Stage, tuned: Stage, feedback_model: Path, prefix: str = ""
) -> Stage:
    """Attacks on the optimiser's model, archived per (category, style) cell: the stage ``<prefix>red_team``.

    Its archive is the prompt source ``red_team:<stage dir>`` for the next round's critique-revise.
    """
    cfg = ctx.config
    red_inputs = {
        "model": tuned.output_id,
        "prompts": ctx.fingerprint("red_team.prompts") or ctx.fingerprint("critique_revise.red_team_prompts"),
        "judge": [cfg.eval.feedback_model or sft.output_id, ctx.constitution.identity]
        if cfg.red_team.judge == "feedback"
        else "refusal",
    }
    if "pair" in cfg.red_team.strategies:  # another attacker LM writes other attacks
        red_inputs["attacker"] = cfg.red_team.attacker_model or cfg.eval.feedback_model or sft.output_id
    with run.stage(prefix + "red_team", config=red_team_config(cfg), inputs=red_inputs) as red:
        if not red.done:
            red.record(stages.red_team(ctx, tuned.path, prefix + cfg.optimizer, feedback_model, red.work_dir))
    return red


def closed_loop_round(run: Run, ctx: stages.Context, k: int, sft: Stage, previous: dict, feedback_model: Path) -> dict:
    """Round ``k`` of the loop: amend -> critique-revise -> SL-CAI -> preferences -> reward -> optimiser -> eval
    -> red team, each a stage under ``round<k>/``. Returns this round's critique_revise, red_team and constitution
    stages for the next round.

    The attacks of every red team so far (``red_team:<stage dir>``, whole conversations) join the red-team
    prompts, the preference prompts and the online RL prompts; ``red_team.helpful_prompts`` (benign requests that
    look like the attacks) join the helpful mix, so the model does not learn to refuse what merely resembles them.
    The helpful SFT model still writes the first responses, so critique-and-revise regenerates only the new
    prompts and, after an adopted amendment, the samples whose principles changed. SL-CAI and the rest start
    again from the SFT model, as in round 0, on the larger data.
    """
    from dataclasses import replace

    from align.constitution import load_constitution
    from align.sources import load_prompts
    from align.stages.amend import PROPOSAL

    cfg, p, red = ctx.config, f"round{k}/", previous["red_team"]
    constitution_path = previous.get("constitution_path", Path(cfg.constitution))
    section = cfg.red_team
    candidates = Path(section.candidates) if section.candidates else None
    amend_inputs = {
        "evidence": red.output_id,
        "constitution": ctx.constitution.identity,
        "candidates": candidates.read_text() if candidates else "shipped",
        "judge": str(feedback_model),
    }
    amend_config = {k: getattr(section, k) for k in ("adopt", "max_new_principles", "draft_principles")}
    with run.stage(p + "amend", config=amend_config, inputs=amend_inputs) as amend:
        if not amend.done:
            amend.record(stages.amend(ctx, constitution_path, red.path, feedback_model, amend.work_dir))
    constitution = ctx.constitution
    if section.adopt and amend.metrics.get("adopted"):
        constitution_path = amend.path / PROPOSAL
        constitution = load_constitution(str(constitution_path))
        print(f"[align] {p}: adopted {constitution.identity}", flush=True)
    attacks = previous.get("attacks", [])
    found = []
    if json.loads((red.path / "asr.json").read_text())["overall"]["successes"]:
        found, _ = load_prompts(PromptSource(f"red_team:{red.path}", context="full"), ctx.world, f"{red.path}")
    seen = {json.dumps(q.messages, sort_keys=True) for q in attacks}
    attacks = [*attacks, *(q for q in found if json.dumps(q.messages, sort_keys=True) not in seen)]
    data = {name: [*ctx.prompts(name), *attacks] for name in ATTACKED_SOURCES if name in ctx.data}
    helpful = ctx.prompts("critique_revise.helpful_prompts")
    known = {json.dumps(q.messages, sort_keys=True) for q in helpful}
    extra = [q for q in ctx.prompts("red_team.helpful_prompts") if json.dumps(q.messages, sort_keys=True) not in known]
    data["critique_revise.helpful_prompts"] = [*helpful, *extra]
    # the red team keeps attacking the plain requests it started from, not the wrapped attacks of earlier rounds
    data["red_team.prompts"] = ctx.prompts("red_team.prompts") or ctx.prompts("critique_revise.red_team_prompts")
    ctx = replace(ctx, constitution=constitution, data={**ctx.data, **data})
    print(f"[align] {p}: {len(attacks)} attacks found so far join the training prompts", flush=True)

    earlier_samples = previous["critique_revise"].path / "samples.jsonl"
    revised, sl_cai, prefs, rw, tuned = train_chain(run, ctx, sft, p, [earlier_samples])
    eval_inputs = {
        "sft_cai": sl_cai.output_id,
        cfg.optimizer: tuned.output_id,
        "suites": {s: ctx.fingerprint(f"eval.{s}") for s in ("harmful_prompts", "benign_prompts", "over_refusal")},
        "preferences": prefs.output_id,
        "reward": rw.output_id if rw else None,
        "constitution": constitution.identity,
    }
    with run.stage(p + "eval", config=to_dict(cfg.eval), inputs=eval_inputs) as ev:
        if not ev.done:
            paths = {"sft_cai": sl_cai.path, cfg.optimizer: tuned.path}
            notes = summary_lines(prefs.metrics, rw.metrics if rw else None)
            ev.record(stages.evaluate(ctx, paths, feedback_model, rw.path if rw else None, ev.work_dir, notes))
    red = red_team_stage(run, ctx, sft, tuned, feedback_model, p)
    return {"critique_revise": revised, "red_team": red, "attacks": attacks, "constitution_path": constitution_path}
