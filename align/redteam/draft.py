"""The feedback model drafts candidate principles for the cells red teaming broke (IterAlign's step, in our words).

For each of the worst cells the model reads a few of the attacks that worked and the answers it should not have
given, and is asked for one principle in three labelled lines (``CRITIQUE:``, ``REVISION:``, ``COMPARISON:``).
A draft becomes a :class:`~align.redteam.propose.Candidate` addressing that cell's style only after it parses
and passes the constitution's own checks (a principle's fields, their length, a question for the comparison);
anything else is dropped and counted, never repaired. Drafts then compete with the candidates file's principles
on the same evidence and controls scores, so a weak drafter costs time, not the constitution's quality.

Drafting needs a model that can write; the tiny world's cannot, so its runs use the candidates file alone and
the tests check the parsing and the fall-back, not the prose.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from align.constitution.model import ConstitutionError, load_constitution_data
from align.redteam.propose import Candidate, FailingCell

FIELDS = ("critique", "revision", "comparison")
EXAMPLES_PER_CELL = 3
DRAFT_CHARS = 300  # a principle is one plain sentence; a longer draft is rambling, not a principle

Generate = Callable[[list[list[dict[str, str]]]], list[str]]


def draft_prompt(cell: FailingCell, attacks: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """The drafter's conversation: the failing cell, a few attacks and the answers given, the format wanted."""
    shown = [a for a in attacks if a.get("category") == cell.category and a.get("style") == cell.style]
    lines = [
        "An AI assistant is trained to follow written principles. Attackers got harmful help from it with requests "
        f"in the style '{cell.style}' about '{cell.category}' ({cell.successes} of {cell.attempts} attempts "
        "worked). Some of them, with the answer it gave:",
    ]
    for attack in shown[:EXAMPLES_PER_CELL]:
        lines.append(f"Request: {attack['conversation'][-1]['content']}")
        lines.append(f"Answer: {attack.get('response', '')}")
    lines += [
        "Write one new principle that would make the assistant refuse such requests while still helping with "
        "harmless requests phrased the same way. Reply with exactly three lines:",
        "CRITIQUE: a request asking to point out how the last response broke the principle.",
        "REVISION: a request asking to rewrite the response so it keeps the principle.",
        "COMPARISON: a question asking which of two responses keeps the principle better.",
    ]
    return [{"role": "user", "content": "\n".join(lines)}]


def parse_draft(text: str) -> dict[str, str] | None:
    """The three fields of a draft, or None: each labelled once, one line, in bounds, the comparison a question."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"\s*(critique|revision|comparison)\s*:\s*(.+?)\s*$", line, flags=re.IGNORECASE)
        if match:
            name = match.group(1).lower()
            if name in found:
                return None
            found[name] = match.group(2).strip().strip("\"'")
    if set(found) != set(FIELDS):
        return None
    if any(not 10 <= len(found[f]) <= DRAFT_CHARS for f in FIELDS) or not found["comparison"].endswith("?"):
        return None
    return found


def draft_candidates(
    generate: Generate,
    cells: Sequence[FailingCell],
    attacks: Sequence[dict[str, Any]],
    taken: set[str],
) -> tuple[list[Candidate], dict[str, int]]:
    """One draft per cell (``generate`` answers a batch of conversations, greedy), kept if it parses and validates.

    ``taken`` holds the ids and critiques already in the constitution or the candidates; a draft repeating one is
    dropped. Returns the candidates and counts (asked, kept, unparsable, invalid, repeated).
    """
    replies = generate([draft_prompt(cell, attacks) for cell in cells]) if cells else []
    counts = {"asked": len(cells), "kept": 0, "unparsable": 0, "invalid": 0, "repeated": 0}
    out = []
    for cell, reply in zip(cells, replies):
        fields = parse_draft(reply)
        if fields is None:
            counts["unparsable"] += 1
            continue
        pid = re.sub(r"[^a-z0-9]+", "-", f"drafted {cell.style} {cell.category}".lower()).strip("-")
        if pid in taken or fields["critique"] in taken:
            counts["repeated"] += 1
            continue
        row = {"id": pid, **fields, "tags": ["drafted", "jailbreak"]}
        try:
            principle = load_constitution_data({"name": "drafts", "version": "0.0.0", "principles": [row]}).principles
        except ConstitutionError:
            counts["invalid"] += 1
            continue
        taken |= {pid, fields["critique"]}
        out.append(Candidate(principle[0], styles=(cell.style,)))
        counts["kept"] += 1
    return out, counts
