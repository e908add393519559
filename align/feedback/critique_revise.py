"""SL-CAI critique and revision (Bai et al. 2022, section 3), regenerating only what a change invalidates.

For each red-team prompt: sample a response, then for each round draw a principle, ask the feedback
model to critique the latest response against it and then to revise it. All prompts of a round are
generated as one batch, so the cost is a few large batched calls rather than one call per turn.

Incremental regeneration: given the records of an earlier run, a record is reused up to the first round
whose principle changed (or was removed), and only the rest is generated again. For that to be exact,
the principle drawn for (prompt, round) must not depend on the other principles' text or on which other
prompts are in the run, so it is drawn by weighted rendezvous hashing: every principle gets a
pseudo-random score from a hash of (seed, prompt, round, principle id) and its weight, and the best score
wins. Rewording a principle changes no draw; adding one takes over only the draws it wins (in proportion
to its weight), and removing one moves only its own draws. Regenerated samples are batched differently
from a full run, so they are statistically, not bitwise, the same as a fresh run.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from align.config import CritiqueReviseConfig
from align.feedback import prompts
from align.generation.base import Backend, generate_sharded

Conversation = list[dict[str, str]]


def as_conversation(prompt: str | Sequence[dict[str, str]]) -> Conversation:
    """A prompt as the conversation the model answers: a bare string is one user turn."""
    return [prompts.user(prompt)] if isinstance(prompt, str) else [dict(m) for m in prompt]


def prompt_key(conversation: Sequence[dict[str, str]]) -> str:
    """What identifies a prompt for principle draws and reuse: its text when it is one user turn (so draws stay
    those of a plain prompt list), else the whole conversation."""
    if len(conversation) == 1:
        return conversation[0]["content"]
    return json.dumps(list(conversation), sort_keys=True, ensure_ascii=False)


def _check_prompts(items: Sequence[Conversation], what: str) -> None:
    for i, conversation in enumerate(items):
        if not conversation or not all(isinstance(m.get("content"), str) for m in conversation):
            raise ValueError(f"{what} prompt {i} is not a conversation")
        if conversation[-1]["role"] != "user" or not conversation[-1]["content"].strip():
            raise ValueError(f"{what} prompt {i} is empty")


def _uniform(*parts: Any) -> float:
    """A number in (0, 1) that depends only on ``parts``: the same on every machine and in every run."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / 2**64


def choose_principle(constitution, seed: int, prompt: str, round_index: int):
    """The principle for one (prompt, round), with P(principle) = weight / total weight.

    -ln(u) / w is exponential with rate w, and the smallest of independent exponentials is principle i
    with probability w_i / sum(w) (weighted rendezvous hashing).
    """
    return min(
        constitution.principles,
        key=lambda p: -math.log(_uniform(seed, prompt, round_index, p.id)) / p.weight,
    )


def reuse_key(policy: Backend, feedback: Backend, constitution, cfg: CritiqueReviseConfig, seed: int) -> str:
    """Everything besides the principles that shapes a sample; records from another key are never reused."""
    few_shot = [list(c) for c in constitution.few_shot] if cfg.use_few_shot else []
    blob = [policy.name, feedback.name, asdict(cfg.sampling), seed, few_shot]
    return hashlib.sha256(repr(blob).encode()).hexdigest()[:16]


def _reusable_rounds(old: dict[str, Any] | None, plan: list, key: str) -> int:
    """How many leading rounds of ``old`` were made with the principles now planned (0 = redo all)."""
    if old is None or old.get("reuse_key") != key:
        return -1  # not even the initial response is reusable
    n = 0
    for step, p in zip(old["rounds"], plan):
        if step["principle_id"] != p.id or step["principle_hash"] != p.content_hash:
            break
        n += 1
    return n


def critique_and_revise(
    policy: Backend,
    feedback: Backend,
    constitution,
    red_team: Sequence[str | Conversation],
    helpful: Sequence[str | Conversation],
    cfg: CritiqueReviseConfig,
    seed: int,
    previous: Sequence[dict[str, Any]] = (),
    *,
    generation_seed: int | None = None,
    generate: Callable[..., list[str]] = generate_sharded,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One record per prompt, with every critique and revision and the provenance needed to redo it.

    ``previous`` are records of an earlier run; whatever of them is still valid is reused. Returns the
    records and counts of reused and regenerated ones. ``seed`` draws the principles; sampling uses
    ``generation_seed`` (default ``seed``), so a caller working in shards can seed each shard on its own
    without changing which principle a prompt gets. ``generate`` defaults to splitting each call over the
    accelerate processes; a shard made by one process passes :func:`align.shards.local_generate`.
    """
    gen_seed = seed if generation_seed is None else generation_seed
    red_team = [as_conversation(p) for p in red_team]
    helpful = [as_conversation(p) for p in helpful]
    _check_prompts(red_team, "red-team")
    _check_prompts(helpful, "helpful")
    few_shot = constitution.few_shot if cfg.use_few_shot else ()
    sampling = cfg.sampling
    key = reuse_key(policy, feedback, constitution, cfg, seed)
    old = {(r["kind"], prompt_key(r.get("messages") or [prompts.user(r["prompt"])])): r for r in previous}

    red_keys = [prompt_key(c) for c in red_team]
    plans = [[choose_principle(constitution, seed, p, k) for k in range(cfg.rounds)] for p in red_keys]
    olds = [old.get(("red_team", p)) for p in red_keys]
    kept = [_reusable_rounds(o, plan, key) for o, plan in zip(olds, plans)]

    # Initial responses: reused unless the record is new or was made under another key.
    initial = [o["initial_response"] if k >= 0 else None for o, k in zip(olds, kept)]
    todo = [i for i, k in enumerate(kept) if k < 0]
    fresh = generate(policy, [red_team[i] for i in todo], sampling, gen_seed, "responses")
    for i, r in zip(todo, fresh):
        initial[i] = r
    kept = [max(k, 0) for k in kept]

    rounds: list[list[dict[str, str]]] = [list(o["rounds"][:k]) if k else [] for o, k in zip(olds, kept)]
    latest = [rs[-1]["revision"] if rs else r for rs, r in zip(rounds, initial)]
    for k in range(cfg.rounds):
        active = [i for i in range(len(red_team)) if kept[i] <= k]
        if not active:
            continue
        # Each round critiques the latest revision as if it had been the original answer.
        histories = [[*red_team[i], prompts.assistant(latest[i])] for i in active]
        chosen = [plans[i][k] for i in active]
        critiques = generate(
            feedback,
            [prompts.critique_messages(few_shot, h, p.critique) for h, p in zip(histories, chosen)],
            sampling,
            gen_seed + 1 + 2 * k,
            f"critiques r{k + 1}",
        )
        revisions = generate(
            feedback,
            [
                prompts.revision_messages(few_shot, h, p.critique, c, p.revision)
                for h, p, c in zip(histories, chosen, critiques)
            ],
            sampling,
            gen_seed + 2 + 2 * k,
            f"revisions r{k + 1}",
        )
        for i, p, c, r in zip(active, chosen, critiques, revisions):
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
            latest[i] = r

    old_helpful = [old.get(("helpful", prompt_key(c))) for c in helpful]
    helpful_responses = [o["initial_response"] if o and o.get("reuse_key") == key else None for o in old_helpful]
    todo = [i for i, r in enumerate(helpful_responses) if r is None]
    fresh = generate(policy, [helpful[i] for i in todo], sampling, gen_seed + 999, "helpful responses")
    for i, r in zip(todo, fresh):
        helpful_responses[i] = r

    provenance = {
        "constitution": {
            "name": constitution.name,
            "version": constitution.version,
            "hash": constitution.content_hash,
        },
        "policy_model": policy.name,
        "feedback_model": feedback.name,
        "generation": {
            **asdict(sampling),
            "seed": seed,
            "generation_seed": gen_seed,
            "rounds": cfg.rounds,
            "few_shot": cfg.use_few_shot,
        },
        "reuse_key": key,
    }
    records = []
    for i, (conversation, response) in enumerate(zip(red_team, initial)):
        records.append(
            {
                "id": f"red-{i}",
                "kind": "red_team",
                "prompt": conversation[-1]["content"],
                **_context(conversation),
                "initial_response": response,
                "rounds": rounds[i],
                "principle_ids": [r["principle_id"] for r in rounds[i]],
                "final_response": latest[i],
                "reused_rounds": kept[i] if olds[i] is not None and olds[i].get("reuse_key") == key else None,
                **provenance,
            }
        )
    for i, (conversation, response) in enumerate(zip(helpful, helpful_responses)):
        records.append(
            {
                "id": f"help-{i}",
                "kind": "helpful",
                "prompt": conversation[-1]["content"],
                **_context(conversation),
                "initial_response": response,
                "rounds": [],
                "principle_ids": [],
                "final_response": response,
                **provenance,
            }
        )
    regenerated_red = sum(k < cfg.rounds for k in kept) if cfg.rounds else 0
    counts = {
        "reused": len(red_team) - regenerated_red + (len(helpful) - len(todo)),
        "regenerated": regenerated_red + len(todo),
        "regenerated_red_team": regenerated_red,
        "regenerated_helpful": len(todo),
    }
    return records, counts


def _context(conversation: Conversation) -> dict[str, Any]:
    """A multi-turn prompt keeps its whole conversation in the record; a single turn is just ``prompt``."""
    return {"messages": conversation} if len(conversation) > 1 else {}


def record_prompt(record: dict[str, Any]) -> Conversation:
    """The conversation a record's responses answer."""
    return record.get("messages") or [prompts.user(record["prompt"])]


def sft_view(records: Sequence[dict]) -> list[dict]:
    """Prompt + final revision for red-team prompts, prompt + response for helpful ones (paper's SL-CAI mix)."""
    return [
        {"messages": [*record_prompt(r), prompts.assistant(r["final_response"])]}
        for r in records
        if r["final_response"].strip()
    ]


def preference_view(records: Sequence[dict]) -> list[dict]:
    """Final revision preferred over the initial response; pairs where the revision changed nothing are dropped."""
    return [
        {
            "prompt": record_prompt(r),
            "chosen": [prompts.assistant(r["final_response"])],
            "rejected": [prompts.assistant(r["initial_response"])],
            "principle_ids": r["principle_ids"],
        }
        for r in records
        if r["kind"] == "red_team"
        and r["final_response"].strip()
        and r["final_response"].strip() != r["initial_response"].strip()
    ]


def critique_and_revise_sharded(
    policy: Backend,
    feedback: Backend,
    constitution,
    red_team: Sequence[str | Conversation],
    helpful: Sequence[str | Conversation],
    cfg: CritiqueReviseConfig,
    seed: int,
    directory,
    previous: Sequence[dict[str, Any]] = (),
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """:func:`critique_and_revise` in crash-safe shards of ``cfg.shard_size`` prompts under ``directory``.

    Red-team then helpful prompts are cut into fixed shards; each is made by one process with its own seed
    (:func:`align.shards.shard_seed`) and written atomically, so a killed run resumes from its finished
    shards and gives the same records as an uninterrupted one, with any number of processes. Principle
    draws still use ``seed`` alone, so incremental regeneration is unaffected by sharding.
    """
    from align.shards import local_generate, run_sharded, shard_seed

    # a single-turn prompt is kept as its text, so shard hashes do not change with the representation
    def item(p):
        conversation = as_conversation(p)
        return conversation[0]["content"] if len(conversation) == 1 else conversation

    items = [("red_team", item(p)) for p in red_team] + [("helpful", item(p)) for p in helpful]

    def process(shard: list, index: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
        red = [p for kind, p in shard if kind == "red_team"]
        help_ = [p for kind, p in shard if kind == "helpful"]
        records, counts = critique_and_revise(
            policy,
            feedback,
            constitution,
            red,
            help_,
            cfg,
            seed,
            previous,
            generation_seed=shard_seed(seed, index),
            generate=local_generate,
        )
        for j, record in enumerate(records):  # records follow the shard's items: ids count over the whole run
            g = index * cfg.shard_size + j
            record["id"] = f"red-{g}" if record["kind"] == "red_team" else f"help-{g - len(red_team)}"
        return records, counts

    out = run_sharded(items, directory, process, cfg.shard_size, desc="critique_revise")
    counts = {k: int(v) for k, v in out.counts.items()}
    # of the regenerated samples, those an earlier, interrupted attempt made (its shards were reused)
    counts["regenerated_earlier"] = int(out.counts_resumed.get("regenerated", 0))
    return out.records, {**counts, "shards": out.shards, "shards_resumed": out.shards_reused}
