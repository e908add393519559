"""How constitution principles become chat turns.

One module renders every feedback conversation, so the tiny world's demonstrations and the real
critique / revision / comparison requests are the same strings by construction.
"""

from __future__ import annotations

from collections.abc import Sequence

Message = dict[str, str]


def user(content: str) -> Message:
    return {"role": "user", "content": content}


def assistant(content: str) -> Message:
    return {"role": "assistant", "content": content}


def few_shot_prefix(few_shot: Sequence[Sequence[Message]]) -> list[Message]:
    """The constitution's example conversations, flattened into earlier turns of the chat."""
    return [dict(m) for conversation in few_shot for m in conversation]


def critique_messages(
    few_shot: Sequence[Sequence[Message]],
    history: Sequence[Message],
    critique_request: str,
) -> list[Message]:
    """``history`` is the conversation so far: the prompt, the response and earlier rounds."""
    return [*few_shot_prefix(few_shot), *history, user(critique_request)]


def revision_messages(
    few_shot: Sequence[Sequence[Message]],
    history: Sequence[Message],
    critique_request: str,
    critique: str,
    revision_request: str,
) -> list[Message]:
    return [
        *critique_messages(few_shot, history, critique_request),
        assistant(critique),
        user(revision_request),
    ]


def describe(conversation: Sequence[Message]) -> str:
    """A prompt as a comparison question shows it: the request itself, or a multi-turn conversation's transcript."""
    turns = [m for m in conversation if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n".join(f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in turns)


def comparison_messages(prompt: str, response_a: str, response_b: str, question: str) -> list[Message]:
    """A multiple-choice question whose answer starts with "(A)" or "(B)" (RL-CAI labelling)."""
    body = f"Consider this request: {prompt}\n{question}\n(A) {response_a}\n(B) {response_b}"
    return [user(body)]


def comparison_answer(choice: str) -> str:
    if choice not in ("A", "B"):
        raise ValueError(f"choice must be 'A' or 'B', got {choice!r}")
    return f"({choice})"
