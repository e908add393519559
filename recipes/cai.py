"""Constitutional AI, end to end (Bai et al. 2022), one block per stage, on any chat model.

    accelerate launch recipes/cai.py --config recipes/configs/cai_tiny.yaml [--section.field=value ...]
    python recipes/cai.py --config recipes/configs/cai_qwen2.5_1.5b.yaml --limit 8   # a dry run in minutes

sft -> critique_revise -> sft_cai -> preferences -> reward -> dpo | ppo | grpo | rloo [-> red_team] -> eval. Each
stage writes runs/<name>/<stage>/ with a manifest; a stage already done with the same inputs is skipped, and
--force STAGE redoes it and all that follows. Critique-and-revise reuses the samples of principles that did not
change since the last run, so a constitution edit regenerates only what it invalidates. --limit N caps every
source at N rows and every training stage at N steps, in its own run directory (<run_name>-limit<N>).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

import torch

from align import stages
from align.config import ConfigError, RecipeConfig, apply_limit, load_config, to_dict
from align.pipeline import Run, write_json_atomic
from align.stages.evaluate import summary_lines
from align.stages.loop import closed_loop_round, red_team_stage, train_chain

OPTIMIZERS = ["dpo", "ppo", "grpo", "rloo"]
STAGES = ["sft", "critique_revise", "sft_cai", "preferences", "reward", *OPTIMIZERS, "red_team", "eval"]
# The stages of each closed-loop round (red_team.rounds), under runs/<name>/round<k>/.
ROUND_STAGES = ["amend", "critique_revise", "sft_cai", "preferences", "reward", *OPTIMIZERS, "eval", "red_team"]


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML recipe config (see recipes/configs/)")
    parser.add_argument("--force", action="append", default=[], metavar="STAGE", help="redo STAGE and after")
    parser.add_argument("--until", metavar="STAGE", help="stop after STAGE (the stages after it are not started)")
    parser.add_argument("--limit", type=int, help="dry run: at most N prompts/pairs and N optimiser steps per stage")
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


def round_stages(cfg: RecipeConfig, every: bool = False) -> list[str]:
    """The closed loop's stage names in order (``round1/amend``, ...): those this config runs, or ``every`` one."""
    rounds = cfg.red_team.rounds if cfg.red_team is not None else 0
    planned = ["amend", "critique_revise", "sft_cai", "preferences", *(["reward"] if cfg.reward else [])]
    planned += [cfg.optimizer, "eval", "red_team"]
    return [f"round{k}/{s}" for k in range(1, rounds + 1) for s in (ROUND_STAGES if every else planned)]


def main(argv: list[str] | None = None) -> dict:
    args, overrides = parse_args(argv)
    cfg = load_config(RecipeConfig, args.config, overrides)
    if args.limit is not None:
        cfg = apply_limit(cfg, args.limit)
    order = [*STAGES, *round_stages(cfg, every=True)]
    for flag, name in [*(("--force", f) for f in args.force), *([("--until", args.until)] if args.until else [])]:
        if name not in order:
            raise ConfigError(f"{flag} {name}: unknown stage; the stages of this config are {', '.join(order)}")
    root = Path(cfg.output_dir) / cfg.run_name
    from align import console
    from align.distributed import process_state

    console.start(None, verbose=args.verbose, rank=process_state().process_index)
    # Everything that can be checked before a stage runs is: models, chat templates, every prompt source.
    # A run that fails a check writes nothing; the full log of one that passes is in root/logs/.
    ctx = stages.prepare(cfg)
    constitution = ctx.constitution
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    plan = ["sft", "critique_revise", "sft_cai", "preferences", *(["reward"] if cfg.reward else []), cfg.optimizer]
    plan += ["red_team"] if cfg.red_team is not None else []
    plan += ["eval", *round_stages(cfg)]
    run = Run(root, force=set(args.force), order=order, until=args.until, plan=plan)  # locks root
    console.open_log(root)
    if cfg.report_to == "wandb":
        from align.tracking import WandbTracker

        setup_tracking(cfg, root)
        run.tracker = WandbTracker(
            root, cfg.run_name, to_dict(cfg), constitution, upload_models=cfg.wandb_upload_models
        )
    if run.state.is_main_process:  # what the run was aligned to, for reports and `align runs compare`
        write_json_atomic(run.root / "constitution.json", {**constitution.to_dict(), "identity": constitution.identity})
    print(f"[align] constitution {constitution.identity}; run dir {run.root}", flush=True)

    # 1. SFT: the helpful model to start from (the base model as it is, fine-tuned on sft.dataset, or a world's own).
    world_key = ctx.world.base_model_key() if ctx.world else None
    sft_inputs = {"base_model": cfg.base_model, "world": world_key, "dataset": ctx.fingerprint("sft.dataset")}
    with run.stage("sft", config=to_dict(cfg.sft), inputs=sft_inputs) as sft:
        if not sft.done:
            sft.record(stages.train_base(ctx, sft.work_dir))

    # 2-6. Critique and revise (SL-CAI) -> SFT on the revisions -> preferences (revision pairs or AI labels) ->
    # reward model -> DPO / PPO / GRPO / RLOO from the SL-CAI model (align/stages/loop.py, shared with the loop).
    revised, sl_cai, prefs, rw, tuned = train_chain(run, ctx, sft)

    # 7. Red teaming (with a red_team: section): attacks on the optimiser's model, archived per (category, style).
    feedback_model = Path(cfg.eval.feedback_model) if cfg.eval.feedback_model else sft.path
    if cfg.red_team is not None:
        red = red_team_stage(run, ctx, sft, tuned, feedback_model)

    # 8. Evaluation of every model of the run, the optimiser models of earlier runs in this directory included.
    models = {"base": sft, "sft_cai": sl_cai, cfg.optimizer: tuned}
    earlier = {name: run.manifest(name) for name in OPTIMIZERS if name != cfg.optimizer}
    finished = {name: m["output_id"] for name, m in earlier.items() if m.get("status") == "done"}
    eval_inputs = {
        **{name: stage.output_id for name, stage in models.items()},
        **finished,
        "suites": {s: ctx.fingerprint(f"eval.{s}") for s in ("harmful_prompts", "benign_prompts", "over_refusal")},
        "preferences": prefs.output_id,
        "reward": rw.output_id if rw else None,
    }
    with run.stage("eval", config=to_dict(cfg.eval), inputs=eval_inputs) as ev:
        if not ev.done:
            paths = {"base": sft.path, "sft_cai": sl_cai.path}
            paths.update({name: run.root / name for name in OPTIMIZERS if name == cfg.optimizer or name in finished})
            notes = summary_lines(prefs.metrics, rw.metrics if rw else None)
            ev.record(stages.evaluate(ctx, paths, feedback_model, rw.path if rw else None, ev.work_dir, notes))

    # 9. The closed loop (red_team.rounds): the attacks that worked become training data, the constitution
    # proposes an amendment from them, and the whole chain after the base model runs again, round after round.
    if cfg.red_team is not None and cfg.red_team.rounds:
        previous = {"critique_revise": revised, "red_team": red}
        for k in range(1, cfg.red_team.rounds + 1):
            previous = closed_loop_round(run, ctx, k, sft, previous, feedback_model)

    table = (ev.path / "table.md").read_text()
    if run.state.is_main_process:
        from align.evaluation.cards import write_run_cards
        from align.report import write_report

        write_run_cards(run.root, cfg, constitution)  # README.md model cards with each model's eval rows

        report = write_report(run.root)
        print(f"\nHeld-out evaluation ({constitution.identity}):\n{table}", flush=True)
        if cfg.red_team is not None and cfg.red_team.rounds:
            from align.report import loop_table

            print(f"Closed loop, round by round:\n{loop_table(run.root)}", flush=True)
        print(f"Report: {report} (and report.html)", flush=True)
    return json.loads((ev.path / "metrics.json").read_text())


if __name__ == "__main__":
    from align.console import entry_point

    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    sys.exit(entry_point(main))  # user errors: exit 2 without a traceback; the process group torn down
