"""HHH multiple choice: does a policy, or a reward model, prefer the right answer?

Two public layouts are read, one question per row:

- **The CAI paper's** (JSON lines): ``prompt`` holds the conversation, the lettered options and a cue such as
  "The answer is:"; ``corrects`` and ``incorrects`` list the option strings (" (A)", " (B)", ...; any
  number of options, e.g. nine harm categories); two-option rows may also carry ``text_correct`` and
  ``text_incorrect``, the whole transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ...") with each answer.
- **BIG-bench's**: ``input`` (a request, or a Human/Assistant transcript) and ``target_scores`` mapping each
  candidate answer to its score, the best one(s) being right; as a task file (a JSON object whose
  ``examples`` list holds the rows) or as JSON lines.

A **policy** is scored by the log-probability of each option as the continuation of the prompt: the
option letters after the CAI prompt, the whole answer after a BIG-bench conversation. With a chat template
(the default when the tokenizer has one) the prompt is the user's turn and the option the start of the
assistant's; ``raw`` scores plain text as the paper's pretrained models saw it. Accuracy is reported on
the summed log-probability and length-normalised (per option token), since long answers lose probability
just by being long. A **reward model** scores each whole transcript (the CAI rows' ``text_*`` fields, or the
BIG-bench conversation with each answer) through its own chat template. An item whose best score is shared
by several options earns the share of them that are right.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from align.data import DataError, jsonl_rows, parse_hh_transcript
from align.evaluation.judges import reward_scores

Message = dict[str, str]


@dataclass(frozen=True)
class HHHItem:
    """One question: where it came from, what the policy reads, its options, and which are right."""

    where: str  # "file:line N" or "file: examples[i]"
    prompt: str | tuple[Message, ...]  # raw text (CAI layout) or a conversation ending with a user turn
    options: tuple[str, ...]
    correct: frozenset[int]  # indices into options
    transcripts: tuple[tuple[Message, ...], ...] | None  # per option, for reward models; None if the row has none


def _error(where: str, field: str | None, problem: str) -> DataError:
    return DataError(f"{where}: field {field!r}: {problem}" if field else f"{where}: {problem}")


def _string(row: dict, field: str, where: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        got = "missing" if field not in row else f"{type(value).__name__} {value!r}"[:80]
        raise _error(where, field, f"must be a non-empty string, got {got}")
    return value


def _conversation(text: str, where: str, field: str) -> tuple[Message, ...]:
    """A BIG-bench input or CAI transcript as chat messages: a transcript is split, plain text is one user turn."""
    if not text.lstrip().startswith("Human:"):
        return ({"role": "user", "content": text.strip()},)
    try:
        return tuple(parse_hh_transcript(text.lstrip()))
    except DataError as e:
        raise _error(where, field, str(e)) from None


def _cai_item(row: dict, where: str) -> HHHItem:
    prompt = _string(row, "prompt", where)
    letters: dict[str, list[str]] = {}
    for field in ("corrects", "incorrects"):
        value = row.get(field)
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise _error(where, field, 'must be a list of option strings such as [" (A)"]')
        letters[field] = value
    if not letters["corrects"]:
        raise _error(where, "corrects", "names no option; at least one option must be right")
    options = letters["corrects"] + letters["incorrects"]
    if len(set(options)) != len(options):
        raise _error(where, "incorrects", f"repeats an option (options: {options})")
    if len(options) < 2:
        raise _error(where, "incorrects", "names no option; a question needs at least two")
    transcripts = None
    present = [f for f in ("text_correct", "text_incorrect") if f in row]
    if present:
        if len(present) == 1:
            missing = "text_incorrect" if present == ["text_correct"] else "text_correct"
            raise _error(where, missing, f"missing while {present[0]!r} is given; give both transcripts or neither")
        if len(letters["corrects"]) != 1 or len(letters["incorrects"]) != 1:
            raise _error(where, "text_correct", "transcripts only fit a two-option question (one correct, one not)")
        transcripts = tuple(
            _conversation(_string(row, field, where), where, field) for field in ("text_correct", "text_incorrect")
        )
    return HHHItem(where, prompt, tuple(options), frozenset(range(len(letters["corrects"]))), transcripts)


def _bigbench_item(row: dict, where: str) -> HHHItem:
    conversation = _conversation(_string(row, "input", where), where, "input")
    if conversation[-1]["role"] != "user":
        raise _error(where, "input", "the conversation must end with the human's turn")
    scores = row.get("target_scores")
    if not isinstance(scores, dict) or len(scores) < 2:
        raise _error(where, "target_scores", "must map at least two answers to their scores")
    for answer, score in scores.items():
        if not answer.strip():
            raise _error(where, "target_scores", "has an empty answer")
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise _error(where, "target_scores", f"score of {answer[:40]!r} must be a number, got {score!r}")
    best = max(scores.values())
    if best == min(scores.values()):
        raise _error(where, "target_scores", "gives every answer the same score, so none is right")
    options = tuple(scores)
    correct = frozenset(i for i, answer in enumerate(options) if scores[answer] == best)
    transcripts = tuple((*conversation, {"role": "assistant", "content": answer.strip()}) for answer in options)
    return HHHItem(where, conversation, options, correct, transcripts)


def _item(row: Any, where: str) -> HHHItem:
    if not isinstance(row, dict):
        raise _error(where, None, f"expected a JSON object, got {type(row).__name__}")
    if "target_scores" in row or "input" in row:
        return _bigbench_item(row, where)
    if "corrects" in row or "prompt" in row:
        return _cai_item(row, where)
    raise _error(
        where, None, f"no HHH fields; found {sorted(row)}; expected prompt/corrects/incorrects or input/target_scores"
    )


def load_hhh(path: str | Path) -> list[HHHItem]:
    """Every question of an HHH file in either layout; errors name the file, the line (or example) and the field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise DataError(f"{path}: no questions (the file is empty)")
    try:
        json.loads(first)
        one_document = False
    except json.JSONDecodeError:
        one_document = True  # a pretty-printed JSON document: BIG-bench's task.json, or a list of rows
    if one_document:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        if isinstance(document, dict):
            if not isinstance(document.get("examples"), list):
                raise _error(str(path), "examples", "must be the list of questions (BIG-bench task layout)")
            rows, label = document["examples"], "examples"
        elif isinstance(document, list):
            rows, label = document, ""
        else:
            raise DataError(f"{path}: expected a JSON object with 'examples', a list, or JSON lines")
        items = [_item(row, f"{path}: {label}[{i}]") for i, row in enumerate(rows)]
    else:
        items = [_item(row, f"{path}:{n}") for n, row in jsonl_rows(lines, str(path), objects=False)]
    if not items:
        raise DataError(f"{path}: no questions")
    return items


# ---------------------------------------------------------------------------------------------------
# Scoring


def item_credit(scores: Sequence[float], correct: frozenset[int]) -> float:
    """1 if the best-scoring option is right, else 0; a tie at the top earns the right share of the tied options."""
    best = max(scores)
    top = [i for i, s in enumerate(scores) if s == best]
    return sum(i in correct for i in top) / len(top)


def _texts(item: HHHItem, tokenizer, chat: bool) -> tuple[str, list[str]]:
    """(context, continuations) as text for a policy."""
    if chat:
        conversation = (
            [{"role": "user", "content": item.prompt.strip()}] if isinstance(item.prompt, str) else item.prompt
        )
        context = tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)
        return context, [o.strip() for o in item.options]
    if isinstance(item.prompt, str):
        return item.prompt, list(item.options)
    turns = "".join(
        f"\n\nHuman: {m['content']}" if m["role"] == "user" else f"\n\nAssistant: {m['content']}" for m in item.prompt
    )
    return turns + "\n\nAssistant:", [" " + o.strip() for o in item.options]


def _split_ids(tokenizer, context: str, continuation: str, prefix: list[int]) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), cut where the tokenisation of context + continuation leaves the context's.

    Tokenising the two together keeps the tokens the model would really see; where BPE merges the
    context's last characters into the continuation, the merged token counts as the continuation's.
    """
    whole = prefix + tokenizer(context + continuation, add_special_tokens=False).input_ids
    alone = prefix + tokenizer(context, add_special_tokens=False).input_ids
    k = 0
    while k < min(len(whole), len(alone)) and whole[k] == alone[k]:
        k += 1
    if k == 0 or k == len(whole):
        raise ValueError(f"cannot separate the option {continuation!r} from its prompt in tokens")
    return whole[:k], whole[k:]


@torch.inference_mode()
def continuation_logprobs(
    model, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 16
) -> list[float]:
    """Sum of log P(continuation token | everything before it) for each (context ids, continuation ids)."""
    device = next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    out = [float("nan")] * len(pairs)
    model.eval()
    for lo in range(0, len(order), batch_size):
        idx = order[lo : lo + batch_size]
        seqs = [pairs[i][0] + pairs[i][1] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        for row, i in enumerate(idx):
            context, continuation = pairs[i]
            positions = torch.arange(len(context) - 1, len(context) - 1 + len(continuation), device=device)
            targets = torch.tensor(continuation, device=device)
            out[i] = float(logprobs[row, positions, targets].sum())
    return out


def score_policy(
    items: Sequence[HHHItem], model, tokenizer, *, raw: bool | None = None, batch_size: int = 16
) -> dict[str, Any]:
    """Accuracy of a causal LM that picks the option it finds most likely (summed and per-token log-probability).

    ``raw=None`` uses the chat template when the tokenizer has one. Returns accuracy,
    accuracy_length_normalised, n, rendering, and per item the options' log-probabilities and token counts.
    """
    chat = tokenizer.chat_template is not None if raw is None else not raw
    prefix = [] if chat or tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    pairs, owners = [], []
    for k, item in enumerate(items):
        context, continuations = _texts(item, tokenizer, chat)
        for continuation in continuations:
            try:
                pairs.append(_split_ids(tokenizer, context, continuation, prefix))
            except ValueError as e:
                raise DataError(f"{item.where}: {e}") from None
            owners.append(k)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sums = continuation_logprobs(model, pairs, pad, batch_size)
    details, credit, credit_norm = [], 0.0, 0.0
    position = 0
    for item in items:
        n_options = len(item.options)
        item_sums = sums[position : position + n_options]
        lengths = [len(p[1]) for p in pairs[position : position + n_options]]
        position += n_options
        normalised = [s / n for s, n in zip(item_sums, lengths)]
        credit += item_credit(item_sums, item.correct)
        credit_norm += item_credit(normalised, item.correct)
        details.append({"where": item.where, "correct": sorted(item.correct), "logprob": item_sums, "tokens": lengths})
    n = len(items)
    return {
        "accuracy": credit / n,
        "accuracy_length_normalised": credit_norm / n,
        "n": n,
        "rendering": "chat_template" if chat else "raw",
        "items": details,
    }


def score_reward_model(items: Sequence[HHHItem], model, tokenizer, *, batch_size: int = 16) -> dict[str, Any]:
    """Accuracy of a reward model that prefers the transcript it scores highest."""
    missing = [item.where for item in items if item.transcripts is None]
    if missing:
        raise DataError(
            f"{missing[0]}: field 'text_correct': a reward model scores whole transcripts, and this question has none "
            f"({len(missing)} of {len(items)} questions lack them)"
        )
    conversations = [list(t) for item in items for t in item.transcripts]
    scores = reward_scores(model, tokenizer, conversations, batch_size)
    details, credit, position = [], 0.0, 0
    for item in items:
        item_scores = scores[position : position + len(item.options)]
        position += len(item.options)
        credit += item_credit(item_scores, item.correct)
        details.append({"where": item.where, "correct": sorted(item.correct), "reward": item_scores})
    return {"accuracy": credit / len(items), "n": len(items), "items": details}
