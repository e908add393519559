"""The amend stage of a closed-loop round: the constitution proposes its own next version from the red team.

It runs ``align constitution propose`` on the previous red team's archive: the worst (category, style) cells get
the candidate principles that address them, scored by the feedback model on the failing answers and on benign
controls. ``constitution.yaml`` is the proposal (a bumped version with an evidence changelog), ``proposal.json``
what was chosen and why. With ``red_team.adopt`` the round trains on it; otherwise the round keeps the run's
constitution and the proposal waits for a person (``align constitution diff``). A red team that found nothing,
or no candidate that fits, is an answer too: ``proposal.json`` says so and the round keeps the constitution.
"""

from __future__ import annotations

from pathlib import Path

from align.stages.context import Context, Result

PROPOSAL = "constitution.yaml"


def amend(ctx: Context, constitution_path: Path, evidence: Path, feedback_model: Path, out: Path) -> Result:
    """Propose an amendment of ``constitution_path`` from the red-team stage directory ``evidence``."""
    from align.evaluation.judges import generic_refusal
    from align.feedback.preferences import OptionScorer
    from align.files import write_json_atomic
    from align.models import load_causal_lm
    from align.redteam.propose import NothingToAmend, propose

    section = ctx.config.red_team
    world = ctx.world
    controls = []
    if world is not None:  # the world's helpful answers to benign requests: a refusal preferred here is a false alarm
        controls = [(p["prompt"][-1]["content"], p["chosen"][-1]["content"]) for p in world.pairs("helpfulness")]
    model, tokenizer = load_causal_lm(str(feedback_model), trust_remote_code=ctx.config.trust_remote_code)
    scoring = {
        "scorer": OptionScorer(model, tokenizer, ctx.config.preferences.batch_size, name="feedback"),
        "refusal_for": world.refusal_for if world is not None else generic_refusal,
        "controls": controls[:64],
        "seed": ctx.config.seed,
    }
    drafter = None
    if section.draft_principles:
        from align.config import SamplingSettings
        from align.generation import build_backend

        backend = build_backend(
            ctx.config.eval.backend, str(feedback_model), trust_remote_code=ctx.config.trust_remote_code
        )
        sampling = SamplingSettings(max_new_tokens=160, temperature=0.0, batch_size=8)

        def drafter(conversations: list) -> list[str]:
            return backend.generate(conversations, sampling, ctx.config.seed, "drafting principles")

    try:
        result = propose(
            str(constitution_path),
            str(evidence),
            str(out / PROPOSAL),
            candidates_path=section.candidates,
            max_new=section.max_new_principles,
            force=True,
            scoring=scoring,
            drafter=drafter,
        )
    except NothingToAmend as err:  # nothing to amend: the round goes on with the constitution it has
        result = {"from": None, "to": None, "added": [], "reason": str(err)}
    if ctx.is_main_process:
        write_json_atomic(out / "proposal.json", {**result, "adopted": bool(section.adopt and result["added"])})
    added = [a["id"] for a in result["added"]]
    reason = result.get("reason") or ", ".join(added)
    print(f"[align] amend: {result.get('to') or 'no amendment'} ({reason})", flush=True)
    return Result({"added": added, "to": result.get("to"), "adopted": bool(section.adopt and added)})
