"""Lint: warnings about constitutions that load fine.

The loader in :mod:`align.constitution.model` rejects what cannot be used; :func:`lint` only warns about
what is usable but probably not what the author meant.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from align.constitution.model import (
    PRINCIPLE_CHARS,
    Constitution,
    FieldPath,
    Principle,
    _format_path,
    _locate,
    _nearest_line,
    long_principle_fields,
    long_principle_message,
)

__all__ = ["LintWarning", "lint"]

NEAR_DUPLICATE_RATIO = 0.9


@dataclass(frozen=True)
class LintWarning:
    """Something that loads fine but is likely a mistake; printed like a ConstitutionError."""

    code: str
    field: str
    message: str
    source: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        return _locate(self.message, source=self.source, line=self.line, field=self.field)


def lint(c: Constitution, *, rl_cai: bool = False) -> list[LintWarning]:
    """Warnings for a loaded constitution, in file order within each kind of check.

    ``rl_cai`` asks for the checks that only matter when the constitution also labels preferences.
    """
    found: list[LintWarning] = []

    def warn(code: str, path: FieldPath, message: str) -> None:
        found.append(LintWarning(code, _format_path(path), message, c.source, _nearest_line(c.lines, path)))

    if rl_cai:
        for i, p in enumerate(c.principles):
            if p.comparison is None:
                warn(
                    "missing-comparison",
                    ("principles", i),
                    f"principle {p.id!r} has no comparison question, so RL-CAI preference labelling cannot use it",
                )

    for path, length in long_principle_fields(c):
        warn("long-principle", path, long_principle_message(length))

    for i, j, ratio in _near_duplicates(c.principles):
        a, b = c.principles[i], c.principles[j]
        first_line = _nearest_line(c.lines, ("principles", i))
        where = f"principles[{i}]" + (f", line {first_line}" if first_line is not None else "")
        warn(
            "near-duplicate",
            ("principles", j),
            f"principle {b.id!r} is {ratio:.0%} the same as {a.id!r} ({where}) in critique and revision; "
            "near-copies skew sampling toward one idea: merge them or make the difference clear",
        )

    for i, conversation in enumerate(c.few_shot):
        problem = _conversation_problem([m["role"] for m in conversation])
        if problem is not None:
            j, message = problem
            warn("few-shot-shape", ("few_shot", i, "messages", j), message)

    if not any(entry["version"] == c.version for entry in c.changelog):
        warn(
            "changelog",
            ("changelog",) if c.changelog else ("version",),
            f"no changelog entry for version {c.version}; `align constitution bump` adds one",
        )
    return found


def _near_duplicates(principles: Sequence[Principle]) -> Iterable[tuple[int, int, float]]:
    # overlong principles are warned about on their own; comparing them is quadratic in their length
    texts = [f"{p.critique}\n{p.revision}"[: 2 * PRINCIPLE_CHARS] for p in principles]
    for j in range(len(texts)):
        for i in range(j):
            matcher = difflib.SequenceMatcher(None, texts[i], texts[j], autojunk=False)
            # The quick upper bounds skip most pairs without the quadratic exact ratio.
            if matcher.real_quick_ratio() < NEAR_DUPLICATE_RATIO or matcher.quick_ratio() < NEAR_DUPLICATE_RATIO:
                continue
            ratio = matcher.ratio()
            if ratio >= NEAR_DUPLICATE_RATIO:
                yield i, j, ratio


def _conversation_problem(roles: Sequence[str]) -> tuple[int, str] | None:
    """First reason a few-shot example is not a chat a model could have had, with the message index.

    A worked example is shown to the model as a real conversation; one that breaks turn order teaches
    a shape the chat template (and the model) never sees at generation time.
    """
    for j, role in enumerate(roles):
        if role == "system" and j > 0:
            return j, "a system message may only come first"
    start = 1 if roles and roles[0] == "system" else 0
    if start == len(roles):
        return 0, "the example has only a system message; it needs user and assistant turns"
    if roles[start] != "user":
        return start, f"the example must start with a user turn (after an optional system message), not {roles[start]}"
    for j in range(start + 1, len(roles)):
        if roles[j] == roles[j - 1]:
            return j, f"two {roles[j]} turns in a row; user and assistant turns must alternate"
    if roles[-1] != "assistant":
        return len(roles) - 1, "the example ends with a user turn; it should end with the assistant's answer"
    return None
