"""Every prompt, preference pair and SFT conversation the chain reads, from one setting: :class:`PromptSource`.

A source is a file, a folder, a hub dataset or a world's own data (``tiny:harmful/train``); whatever its
format (chat ``messages``, ``prompt``/``completion``, HH-RLHF transcripts, XSTest's CSV), a stage gets
:class:`Prompt` objects: the conversation the model must answer, plus the row's other columns (an XSTest
``type`` and ``label``, a category) for evaluation tables. Sources are loaded and checked before the first stage
runs, so a bad row stops the run in seconds, not after hours of generation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from align.config import RED_TEAM, PromptSource
from align.data import DataError, conversation_from_row, load_preference_pairs, load_records, prompt_column

if TYPE_CHECKING:
    from align.worlds import World

Message = dict[str, str]


@dataclass(frozen=True)
class Prompt:
    """A conversation that ends with the user turn the model answers, and what else its row said about it."""

    messages: tuple[Message, ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def text(self) -> str:
        """The request itself: the last user turn."""
        return self.messages[-1]["content"]

    def conversation(self) -> list[Message]:
        return [dict(m) for m in self.messages]


def prompts_hash(prompts: Sequence[Prompt]) -> str:
    """Content hash of a prompt list, for stage manifests: a changed file or limit redoes the stage."""
    blob = json.dumps([list(p.messages) for p in prompts], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _world_for(source: PromptSource, world: World | None, where: str) -> tuple[World, str]:
    name, selector = source.world() or ("", "")
    if world is None or world.name != name:
        have = f"the run's world is {world.name!r}" if world is not None else "the config has no world: section"
        raise DataError(f"{where}: {source.path} names the world {name!r}, but {have}")
    return world, selector


def load_prompts(source: PromptSource, world: World | None = None, where: str = "") -> tuple[list[Prompt], dict]:
    """The source's prompts, duplicates dropped (and counted), at most ``source.limit`` of them.

    Rows are numbered from 1 in errors, like lines of a JSONL file. Every row read is checked: a prompt set with a
    broken row is an error, not a smaller prompt set. Returns the prompts and ``{"rows", "duplicates_dropped"}``.
    """
    where = where or source.path
    if source.path.startswith(f"{RED_TEAM}:"):
        return _dedupe(red_team_prompts(source, where), source.limit)
    if source.world() is not None:
        owner, selector = _world_for(source, world, where)
        rows = owner.prompts(selector)
        if not rows:
            raise DataError(f"{where}: {source.path}: the world has no prompts for {selector!r}")
        return _dedupe(rows, source.limit)
    dataset = load_records(source.path, split=source.split, name=source.name, data_dir=source.data_dir)
    if len(dataset) == 0:
        raise DataError(f"{source.path}: empty prompt file (no rows)")

    def read() -> Iterator[Prompt]:
        for i, row in enumerate(dataset, start=1):
            try:
                messages = conversation_from_row(row, column=source.column, context=source.context)
                used = prompt_column(row, source.column)
            except DataError as err:
                raise DataError(f"{source.path}: row {i}: {err}") from None
            meta = {k: v for k, v in row.items() if k != used and isinstance(v, (str, int, float, bool))}
            yield Prompt(tuple(messages), {**meta, "row": i})

    return _dedupe(read(), source.limit)


def red_team_prompts(source: PromptSource, where: str = "") -> list[Prompt]:
    """The successful attacks of an ``align redteam`` run (``red_team:<run dir>``), as prompts to train on.

    Why: the attacks a model fell for are the prompts its next critique-revise round most needs, in the style and
    turns that broke it. ``context: full`` keeps a multi-turn attack's whole conversation (the earlier turns and
    the target's own reply); the default keeps only the turn that carries the request, the last user turn (a
    multi-turn attack's *first* turn is its harmless opener). Meta says the cell (category, style) and score.
    """
    from pathlib import Path

    where = where or source.path
    folder = Path(source.path[len(RED_TEAM) + 1 :])
    archive = folder / "archive.jsonl"
    if not archive.is_file():
        raise DataError(f"{where}: {source.path}: no archive.jsonl in {folder} (make one with `align redteam -o DIR`)")
    prompts = []
    for i, line in enumerate(archive.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            conversation = row["conversation"]
            success = bool(row["success"])
            ok = (
                isinstance(conversation, list)
                and conversation
                and all(
                    isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)
                    for m in conversation
                )
            )
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{archive}: line {i}: not an archive row ({err})") from None
        if not ok or conversation[-1]["role"] != "user":
            raise DataError(f"{archive}: line {i}: 'conversation' must be messages ending with a user turn")
        if not success:
            continue
        turns = conversation if source.context == "full" else conversation[-1:]
        meta = {
            "label": "harmful",
            "category": str(row.get("category", "all")),
            "style": str(row.get("style", "")),
            "score": float(row.get("score", 0.0)),
            "request": str(row.get("request", "")),
            "row": i,
        }
        prompts.append(Prompt(tuple({"role": m["role"], "content": m["content"]} for m in turns), meta))
    if not prompts:
        raise DataError(f"{where}: {source.path}: the archive holds no successful attacks to train on")
    return prompts


def _dedupe(rows: Iterable[Prompt], limit: int | None) -> tuple[list[Prompt], dict]:
    """The first ``limit`` distinct prompts, and how many rows were read and dropped as repeats to find them."""
    kept, seen, read = [], set(), 0
    for prompt in rows:
        read += 1
        key = json.dumps(prompt.messages, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        kept.append(prompt)
        if limit is not None and len(kept) >= limit:
            break
    return kept, {"rows": read, "duplicates_dropped": read - len(kept)}


def load_pairs(source: PromptSource, world: World | None = None, where: str = "") -> list[dict[str, Any]]:
    """Conversational prompt/chosen/rejected rows: a file of pairs, HH-RLHF's transcripts, or a world's pairs."""
    where = where or source.path
    if source.world() is not None:
        owner, selector = _world_for(source, world, where)
        rows = owner.pairs(selector)
        return rows[: source.limit] if source.limit is not None else rows
    return load_preference_pairs(
        source.path,
        split=source.split,
        limit=source.limit,
        name=source.name,
        data_dir=source.data_dir,
        context=source.context,
    )


def load_conversations(source: PromptSource) -> list[dict[str, list[Message]]]:
    """Whole conversations for supervised fine-tuning, as ``messages`` rows ending with an assistant turn.

    Accepts ``messages`` rows, ``prompt``/``completion`` rows (strings or messages) and HH-RLHF transcripts
    (the ``chosen`` one: the preferred answer is what to imitate). Rows whose last turn is not the assistant's
    teach nothing and are an error, named by row.
    """
    dataset = load_records(source.path, split=source.split, name=source.name, data_dir=source.data_dir)
    if len(dataset) == 0:
        raise DataError(f"{source.path}: empty dataset (no rows)")
    rows = []
    for i, row in enumerate(dataset, start=1):
        try:
            messages = _sft_messages(row, source.column)
        except DataError as err:
            raise DataError(f"{source.path}: row {i}: {err}") from None
        rows.append({"messages": messages})
        if source.limit is not None and len(rows) >= source.limit:
            break
    return rows


def _sft_messages(row: dict[str, Any], column: str | None) -> list[Message]:
    from align.data import parse_hh_transcript

    if column is None and row.get("completion") is not None and row.get("messages") is None:
        prompt = conversation_from_row(row, column="prompt", context="full")
        completion = row["completion"]
        if isinstance(completion, list):
            turns = [m for m in completion if isinstance(m, dict) and m.get("role") == "assistant"]
            completion = turns[-1].get("content") if turns else None
        if not isinstance(completion, str) or not completion.strip():
            raise DataError("field 'completion' must be a non-empty string or assistant message")
        return [*prompt, {"role": "assistant", "content": completion.strip()}]
    name = prompt_column(row, column)
    value = row[name]
    if isinstance(value, str):
        messages = parse_hh_transcript(value)
    elif isinstance(value, list):
        messages = [dict(m) for m in value if isinstance(m, dict)]
    else:
        raise DataError(f"field {name!r} must be a list of messages or an HH-RLHF transcript")
    if not messages or messages[-1].get("role") != "assistant" or not str(messages[-1].get("content", "")).strip():
        raise DataError(f"field {name!r}: the conversation must end with a non-empty assistant turn to train on")
    return [{"role": m["role"], "content": str(m["content"]).strip()} for m in messages]


def context_length(model: Any, tokenizer: Any) -> int | None:
    """The model's context window: its config's position limit, else the tokenizer's (when it states a real one)."""
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for value in (getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)):
        if isinstance(value, int) and 0 < value < 10**7:  # transformers' "no limit" sentinel is ~1e30
            return value
    return None


def limit_length(
    prompts: Sequence[Prompt], tokenizer: Any, max_tokens: int | None, rule: str, where: str
) -> tuple[list[Prompt], dict[str, int]]:
    """Apply a prompt-length limit, counted on the conversation as the chat template renders it.

    Overlong prompts are dropped, or with ``rule: truncate`` their last user turn is cut to fit. Why a rule rather
    than an error: real prompt sets have a long tail, and one 20k-token prompt should not stop a run, nor silently
    stall a batch for minutes. Returns the prompts and the counts the stage puts in its metrics; ``where`` (the
    config field) names the source if nothing is left.
    """
    from align.chat import render

    counts = {"prompts_overlong": 0, "prompts_truncated": 0, "prompts_dropped": 0}
    if max_tokens is None:
        return list(prompts), counts
    kept = []
    for prompt in prompts:
        text = render(tokenizer, prompt.messages, add_generation_prompt=True)
        over = len(tokenizer(text, add_special_tokens=False).input_ids) - max_tokens
        if over <= 0:
            kept.append(prompt)
            continue
        counts["prompts_overlong"] += 1
        ids = tokenizer(prompt.text, add_special_tokens=False).input_ids
        if rule == "drop" or over >= len(ids):
            counts["prompts_dropped"] += 1
            continue
        cut = tokenizer.decode(ids[: len(ids) - over], skip_special_tokens=True).strip()
        kept.append(Prompt((*prompt.messages[:-1], {"role": "user", "content": cut}), prompt.meta))
        counts["prompts_truncated"] += 1
    if prompts and not kept:
        raise DataError(f"{where}: every prompt is longer than max_prompt_tokens={max_tokens} and was dropped")
    return kept, counts
