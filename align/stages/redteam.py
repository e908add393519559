"""The red_team stage: attack the optimiser's model with align/redteam's search and publish the archive.

The search keeps its resumable state (``state.json`` and the files it rewrites every iteration) under the
stage's ``shards/`` folder, which the pipeline keeps when a stage dies and drops from the published output; a
killed stage, run again, continues the search where it stopped. When it finishes, ``archive.jsonl``,
``asr.json``, ``asr.md`` and ``heatmap.png`` are copied to the stage folder, where ``red_team:<stage dir>``
reads them as prompts for the next round.

With the pair strategy an attacker LM (``red_team.attacker_model``, default the run's feedback model) writes
attacks through ``eval.backend``, like the target's answers.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from align.config import SamplingSettings
from align.stages.context import Context, Result

OUTPUTS = ("archive.jsonl", "asr.json", "asr.md", "heatmap.png")


def red_team(ctx: Context, model_dir: Path, model_name: str, feedback_model: Path, out: Path) -> Result:
    """Red-team ``model_dir``; metrics are the overall ASR, cells filled, queries, attacks/s and judge precision."""
    from align.distributed import process_state
    from align.generation import build_backend
    from align.generation.base import generation_meter
    from align.redteam.search import SearchSettings, run_search, seeds_from_prompts

    section = ctx.config.red_team
    prompts = ctx.prompts("red_team.prompts") or ctx.prompts("critique_revise.red_team_prompts")
    seeds = seeds_from_prompts(prompts)
    settings = SearchSettings(
        max_queries=section.max_queries,
        max_seconds=section.max_seconds,
        batch_size=section.batch_size,
        seed=ctx.config.seed,
        **({"styles": tuple(section.styles)} if section.styles else {}),
        strategies=tuple(section.strategies),
        pair_iterations=section.pair_iterations,
        escalation_turns=section.escalation_turns,
    )
    state = process_state()
    search_dir = out / "shards" / "search"
    if ctx.is_main_process:  # one process searches (the batches are small); the others wait
        backend = build_backend(
            ctx.config.eval.backend,
            str(model_dir),
            name=model_name,
            trust_remote_code=ctx.config.trust_remote_code,
            run_model=True,
        )
        sampling = SamplingSettings(
            max_new_tokens=section.max_new_tokens, temperature=0.0, batch_size=section.batch_size
        )

        def target(conversations: list) -> list[str]:
            return backend.generate(conversations, sampling, ctx.config.seed, f"red team {model_name}")

        fingerprint = {"model": model_name, "judge": section.judge, "max_new_tokens": section.max_new_tokens}
        attacker = None
        if "pair" in section.strategies:
            attacker, fingerprint["attacker"] = _attacker(ctx, feedback_model)
        reference = ctx.world.reference_judge() if ctx.world is not None else None
        with generation_meter(f"red team {model_name}"):
            summary = run_search(
                seeds,
                target,
                _judge(ctx, feedback_model),
                search_dir,
                settings,
                fingerprint=fingerprint,
                reference=reference,
                attacker=attacker,
                log=lambda line: print(f"[align] red_team: {line}", flush=True),
            )
        for name in OUTPUTS:
            if (search_dir / name).exists():
                shutil.copy2(search_dir / name, out / name)
    state.wait_for_everyone()
    import json

    summary = json.loads((out / "asr.json").read_text())
    metrics = {
        "asr": summary["overall"]["asr"],
        "attacks": summary["overall"]["attempts"],
        "cells_filled": summary["cells_filled"],
        "cells_total": summary["cells_total"],
        "queries": summary["queries"],
        "attacks_per_second": summary["attacks_per_second"],
    }
    if "judge_precision" in summary:
        metrics["judge_precision"] = summary["judge_precision"]["precision"]
    cells = summary["cells"].values()
    table = (
        ["category", "style", "attempts", "successes", "asr"],
        [[c["category"], c["style"], c["attempts"], c["successes"], c["asr"]] for c in cells],
    )
    return Result(metrics, {"red_team_cells": table})


def _attacker(ctx: Context, feedback_model: Path):
    """The pair strategy's attacker LM through eval.backend, and its name for the search's fingerprint.

    It defaults to the run's feedback model: a model the run already has, and one that writes whole sentences.
    Sampled (temperature 1, as PAIR's attacker) with a seed the search draws, so a re-run writes the same attacks.
    """
    from align.generation import build_backend

    section = ctx.config.red_team
    name = section.attacker_model or str(feedback_model)
    settings = ctx.config.eval.backend
    if section.attacker_model is None and ctx.config.eval.feedback_model is None and settings.kind == "openai":
        # the default, the run's SFT model, is no model a server serves (eval.backend.model names the policy)
        settings = replace(settings, kind="transformers")
    backend = build_backend(settings, name, name="attacker", trust_remote_code=ctx.config.trust_remote_code)
    sampling = SamplingSettings(
        max_new_tokens=section.attacker_max_new_tokens, temperature=1.0, batch_size=section.batch_size
    )

    def attacker(conversations: list, seed: int) -> list[str]:
        return backend.generate(conversations, sampling, seed, "red team attacker")

    return attacker, name


def _judge(ctx: Context, feedback_model: Path):
    from align.evaluation.judges import FeedbackJudge, RefusalJudge, generic_refusal

    section = ctx.config.red_team
    if section.judge == "refusal":
        return RefusalJudge(ctx.config.eval.refusal)
    from align.feedback.preferences import OptionScorer
    from align.models import load_causal_lm

    model, tokenizer = load_causal_lm(str(feedback_model), trust_remote_code=ctx.config.trust_remote_code)
    return FeedbackJudge(
        OptionScorer(model, tokenizer, ctx.config.preferences.batch_size, name="feedback"),
        ctx.constitution,
        refusal_for=ctx.world.refusal_for if ctx.world is not None else generic_refusal,
        num_principles=section.num_principles,
        seed=ctx.config.seed,
        refusal_gate=RefusalJudge(ctx.config.eval.refusal),  # a declined request is never a successful attack
    )
