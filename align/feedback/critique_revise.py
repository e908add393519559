"""SL-CAI critique and revision (Bai et al. 2022, section 3).

For each red-team prompt: sample a response, then for each round draw a principle, ask the feedback
model to critique the latest response against it and then to revise it. All prompts of a round are
generated as one batch, so the cost is a few large batched calls rather than one call per turn.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from align.config import CritiqueReviseConfig
from align.feedback import prompts
from align.generation.base import Backend, generate_sharded


def _check_prompts(items: Sequence[str], what: str) -> None:
    for i, p in enumerate(items):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"{what} prompt {i} is empty")


def critique_and_revise(
    policy: Backend,
    feedback: Backend,
    constitution,
    red_team: Sequence[str],
    helpful: Sequence[str],
    cfg: CritiqueReviseConfig,
    seed: int,
) -> list[dict[str, Any]]:
    """One record per prompt, with every critique and revision and the provenance needed to redo it."""
    _check_prompts(red_team, "red-team")
    _check_prompts(helpful, "helpful")
    rng = random.Random(seed)
    few_shot = constitution.few_shot if cfg.use_few_shot else ()
    sampling = cfg.sampling

    initial = generate_sharded(policy, [[prompts.user(p)] for p in red_team], sampling, seed, "responses")
    histories = [[prompts.user(p), prompts.assistant(r)] for p, r in zip(red_team, initial)]
    rounds: list[list[dict[str, str]]] = [[] for _ in red_team]
    for k in range(cfg.rounds):
        chosen = [constitution.sample_principle(rng) for _ in red_team]
        critiques = generate_sharded(
            feedback,
            [prompts.critique_messages(few_shot, h, p.critique) for h, p in zip(histories, chosen)],
            sampling,
            seed + 1 + 2 * k,
            f"critiques r{k + 1}",
        )
        revisions = generate_sharded(
            feedback,
            [
                prompts.revision_messages(few_shot, h, p.critique, c, p.revision)
                for h, p, c in zip(histories, chosen, critiques)
            ],
            sampling,
            seed + 2 + 2 * k,
            f"revisions r{k + 1}",
        )
        for i, (p, c, r) in enumerate(zip(chosen, critiques, revisions)):
            rounds[i].append(
                {
                    "principle_id": p.id,
                    "principle_hash": p.content_hash,
                    "critique_request": p.critique,
                    "critique": c,
                    "revision_request": p.revision,
                    "revision": r,
                }
            )
            # The next round critiques the revision, as if it had been the original answer.
            histories[i] = [histories[i][0], prompts.assistant(r)]

    helpful_responses = generate_sharded(
        policy, [[prompts.user(p)] for p in helpful], sampling, seed + 999, "helpful responses"
    )
    provenance = {
        "constitution": {
            "name": constitution.name,
            "version": constitution.version,
            "hash": constitution.content_hash,
        },
        "policy_model": policy.name,
        "feedback_model": feedback.name,
        "generation": {**asdict(sampling), "seed": seed, "rounds": cfg.rounds, "few_shot": cfg.use_few_shot},
    }
    records = []
    for i, (prompt, response) in enumerate(zip(red_team, initial)):
        final = rounds[i][-1]["revision"] if rounds[i] else response
        records.append(
            {
                "id": f"red-{i}",
                "kind": "red_team",
                "prompt": prompt,
                "initial_response": response,
                "rounds": rounds[i],
                "principle_ids": [r["principle_id"] for r in rounds[i]],
                "final_response": final,
                **provenance,
            }
        )
    for i, (prompt, response) in enumerate(zip(helpful, helpful_responses)):
        records.append(
            {
                "id": f"help-{i}",
                "kind": "helpful",
                "prompt": prompt,
                "initial_response": response,
                "rounds": [],
                "principle_ids": [],
                "final_response": response,
                **provenance,
            }
        )
    return records


def sft_view(records: Sequence[dict]) -> list[dict]:
    """Prompt + final revision for red-team prompts, prompt + response for helpful ones (paper's SL-CAI mix)."""
    return [
        {"messages": [prompts.user(r["prompt"]), prompts.assistant(r["final_response"])]}
        for r in records
        if r["final_response"].strip()
    ]


def preference_view(records: Sequence[dict]) -> list[dict]:
    """Final revision preferred over the initial response; pairs where the revision changed nothing are dropped."""
    return [
        {
            "prompt": [prompts.user(r["prompt"])],
            "chosen": [prompts.assistant(r["final_response"])],
            "rejected": [prompts.assistant(r["initial_response"])],
            "principle_ids": r["principle_ids"],
        }
        for r in records
        if r["kind"] == "red_team"
        and r["final_response"].strip()
        and r["final_response"].strip() != r["initial_response"].strip()
    ]
