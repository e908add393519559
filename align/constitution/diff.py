"""Semantic diff of two constitutions, by principle id, with the version bump the change needs.

A constitution's version is a promise to whoever reuses generated data: a patch release rewords, a
minor release adds principles (old samples stay valid), a major release removes something (old samples
may no longer be reproducible). :func:`diff_constitutions` derives the bump a change needs from the
content itself, so that promise can be checked in CI instead of remembered by reviewers.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from align.constitution.model import Constitution, Principle, _principle_content
from align.constitution.versions import Level, _rank, bump_version, version_change

__all__ = ["ConstitutionDiff", "FieldChange", "PrincipleChange", "diff_constitutions", "word_diff"]

# The principle fields whose text the model sees: a change to one of them means regenerating samples.
TEXT_FIELDS = ("critique", "revision", "comparison")
WordOp = tuple[str, str]


def word_diff(old: str | None, new: str | None) -> tuple[WordOp, ...]:
    """``(op, text)`` runs with op ``equal``, ``delete`` or ``insert``, on whitespace-separated words.

    Words rather than characters, as in ``git diff --word-diff``: reviewers read meaning changes, and
    character-level diffs of reworded sentences are hard to read.
    """
    a, b = (old or "").split(), (new or "").split()
    out: list[WordOp] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            out.append(("equal", " ".join(a[i1:i2])))
            continue
        if i2 > i1:
            out.append(("delete", " ".join(a[i1:i2])))
        if j2 > j1:
            out.append(("insert", " ".join(b[j1:j2])))
    return tuple(out)


@dataclass(frozen=True)
class FieldChange:
    """One field that differs; ``words`` is set for text, where a word diff is what a reader wants."""

    field: str
    old: Any
    new: Any
    words: tuple[WordOp, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"field": self.field, "old": self.old, "new": self.new}
        if self.words is not None:
            d["words"] = [{"op": op, "text": text} for op, text in self.words]
        return d


def _text_change(name: str, old: str | None, new: str | None) -> FieldChange:
    return FieldChange(name, old, new, word_diff(old, new))


@dataclass(frozen=True)
class PrincipleChange:
    """A principle present on both sides (same id) whose fields differ."""

    id: str
    old: Principle
    new: Principle
    fields: tuple[FieldChange, ...]

    @property
    def reworded(self) -> bool:
        """True when the text the model sees changed, i.e. samples using it need regenerating."""
        return any(f.field in TEXT_FIELDS for f in self.fields)


@dataclass(frozen=True)
class ConstitutionDiff:
    """What changed between two constitutions, keyed by principle id, and what version bump that needs."""

    old: Constitution
    new: Constitution
    added: tuple[Principle, ...]
    removed: tuple[Principle, ...]
    changed: tuple[PrincipleChange, ...]
    reordered: bool
    metadata: tuple[FieldChange, ...]
    changelog_added: tuple[dict[str, str], ...]
    reasons: tuple[tuple[Level, str], ...]

    @property
    def content_changed(self) -> bool:
        return self.old.content_hash != self.new.content_hash

    @property
    def has_changes(self) -> bool:
        return self.content_changed or self.old.version != self.new.version or bool(self.changelog_added)

    @property
    def required_bump(self) -> Level:
        return max((level for level, _ in self.reasons), key=_rank, default="none")

    @property
    def actual_bump(self) -> str:
        return version_change(self.old.version, self.new.version)

    @property
    def sufficient(self) -> bool:
        """Whether the version change between the two sides covers the content change."""
        actual = self.actual_bump
        return actual != "downgrade" and _rank(actual) >= _rank(self.required_bump)

    @property
    def suggested_version(self) -> str:
        """The smallest version after the old one that covers the change."""
        return bump_version(self.old.version, self.required_bump)

    def to_dict(self) -> dict[str, Any]:
        """Machine-readable form; keys are stable, so CI scripts can rely on them."""

        def side(c: Constitution) -> dict[str, Any]:
            return {
                "source": c.source,
                "name": c.name,
                "version": c.version,
                "identity": c.identity,
                "content_hash": c.content_hash,
            }

        return {
            "old": side(self.old),
            "new": side(self.new),
            "content_changed": self.content_changed,
            "principles": {
                "added": [_principle_content(p) for p in self.added],
                "removed": [_principle_content(p) for p in self.removed],
                "changed": [
                    {"id": ch.id, "reworded": ch.reworded, "fields": [f.to_dict() for f in ch.fields]}
                    for ch in self.changed
                ],
                "reordered": self.reordered,
            },
            "metadata": [f.to_dict() for f in self.metadata],
            "changelog_added": [dict(e) for e in self.changelog_added],
            "bump": {
                "required": self.required_bump,
                "reasons": [{"level": level, "reason": why} for level, why in self.reasons],
                "actual": self.actual_bump,
                "sufficient": self.sufficient,
                "suggested_version": self.suggested_version,
            },
        }


def diff_constitutions(old: Constitution, new: Constitution) -> ConstitutionDiff:
    """Compare by principle id, so moving or rewording a principle is not mistaken for remove + add.

    Bump rules: removing a principle (or renaming its id, or the constitution) is major, since data
    generated with it can no longer be traced to a principle that exists; adding one is minor; any
    other content change (wording, tags, weight, order, description, few-shot examples) is patch.
    """
    old_ids = {p.id: p for p in old.principles}
    new_ids = {p.id: p for p in new.principles}
    removed = tuple(p for p in old.principles if p.id not in new_ids)
    added = tuple(p for p in new.principles if p.id not in old_ids)
    changed = []
    for p in new.principles:
        before = old_ids.get(p.id)
        if before is not None and before != p:
            changed.append(PrincipleChange(p.id, before, p, _principle_fields(before, p)))
    common_old = [p.id for p in old.principles if p.id in new_ids]
    common_new = [p.id for p in new.principles if p.id in old_ids]
    reordered = common_old != common_new

    metadata: list[FieldChange] = []
    if old.name != new.name:
        metadata.append(FieldChange("name", old.name, new.name))
    if old.description != new.description:
        metadata.append(_text_change("description", old.description, new.description))
    few_shot = _few_shot_changes(old.few_shot, new.few_shot)
    metadata.extend(few_shot)

    reasons: list[tuple[Level, str]] = []
    if old.name != new.name:
        reasons.append(("major", f"renamed the constitution from {old.name!r} to {new.name!r}"))
    reasons += [("major", f"removed principle {p.id!r}") for p in removed]
    reasons += [("minor", f"added principle {p.id!r}") for p in added]
    for ch in changed:
        verb = "reworded" if ch.reworded else "changed"
        reasons.append(("patch", f"{verb} {ch.id!r} ({', '.join(f.field for f in ch.fields)})"))
    if reordered:
        reasons.append(("patch", "reordered principles (a seeded run draws different ones)"))
    if old.description != new.description:
        reasons.append(("patch", "changed the description"))
    if few_shot:
        reasons.append(("patch", "changed the few-shot examples"))
    if old.content_hash != new.content_hash and not reasons:
        # Only reachable if the content hash grows a field this diff does not know about yet.
        reasons.append(("patch", "changed content"))

    old_entries = [dict(e) for e in old.changelog]
    changelog_added = tuple(dict(e) for e in new.changelog if dict(e) not in old_entries)
    return ConstitutionDiff(
        old=old,
        new=new,
        added=added,
        removed=removed,
        changed=tuple(changed),
        reordered=reordered,
        metadata=tuple(metadata),
        changelog_added=changelog_added,
        reasons=tuple(reasons),
    )


def _principle_fields(a: Principle, b: Principle) -> tuple[FieldChange, ...]:
    out = [
        _text_change(name, getattr(a, name), getattr(b, name))
        for name in TEXT_FIELDS
        if getattr(a, name) != getattr(b, name)
    ]
    if a.tags != b.tags:
        out.append(FieldChange("tags", list(a.tags), list(b.tags)))
    if a.weight != b.weight:
        out.append(FieldChange("weight", a.weight, b.weight))
    return tuple(out)


def _few_shot_changes(
    old: Sequence[Sequence[Mapping[str, str]]], new: Sequence[Sequence[Mapping[str, str]]]
) -> list[FieldChange]:
    """Changes by position: few-shot examples are short, so a positional diff reads well enough."""
    out = []
    for i in range(max(len(old), len(new))):
        path = f"few_shot[{i}]"
        if i >= len(old):
            out.append(FieldChange(path, None, [dict(m) for m in new[i]]))
            continue
        if i >= len(new):
            out.append(FieldChange(path, [dict(m) for m in old[i]], None))
            continue
        a, b = old[i], new[i]
        for j in range(max(len(a), len(b))):
            mpath = f"{path}.messages[{j}]"
            if j >= len(a):
                out.append(FieldChange(mpath, None, dict(b[j])))
            elif j >= len(b):
                out.append(FieldChange(mpath, dict(a[j]), None))
            else:
                if a[j]["role"] != b[j]["role"]:
                    out.append(FieldChange(f"{mpath}.role", a[j]["role"], b[j]["role"]))
                if a[j]["content"] != b[j]["content"]:
                    out.append(_text_change(f"{mpath}.content", a[j]["content"], b[j]["content"]))
    return out
