"""Working with constitutions over time: lint, semantic diff, version bumps, git sources, other layouts.

A constitution's version is a promise to whoever reuses generated data: a patch release rewords, a
minor release adds principles (old samples stay valid), a major release removes something (old samples
may no longer be reproducible). The tools here derive the bump a change needs from the content itself,
so that promise can be checked in CI instead of remembered by reviewers.

The loader in :mod:`align.constitution` rejects what cannot be used; :func:`lint` only warns about what
is usable but probably not what the author meant.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from align.constitution import (
    _SEMVER_RE,
    ROLES,
    SUFFIXES,
    Constitution,
    ConstitutionError,
    FieldPath,
    Principle,
    _format_path,
    _parse_json,
    _Validator,
    load_constitution,
    load_constitution_data,
    parse_constitution_text,
)

__all__ = [
    "BUMP_LEVELS",
    "CheckResult",
    "ConstitutionDiff",
    "FieldChange",
    "Imported",
    "LintWarning",
    "PrincipleChange",
    "bump_file",
    "bump_version",
    "check_file",
    "diff_constitutions",
    "dump_constitution",
    "export_llm_swarm",
    "import_anthropic",
    "import_llm_swarm",
    "lint",
    "load_at_revision",
    "read_source",
    "render_markdown",
    "render_text",
    "split_source",
    "version_change",
    "word_diff",
    "write_atomic",
]

Level = Literal["none", "patch", "minor", "major"]
BUMP_LEVELS: tuple[Level, ...] = ("none", "patch", "minor", "major")
TEXT_FIELDS = ("critique", "revision", "comparison")
NEAR_DUPLICATE_RATIO = 0.9


def _rank(level: str) -> int:
    return BUMP_LEVELS.index(level)  # type: ignore[arg-type]


def _line(c: Constitution, path: FieldPath) -> int | None:
    """The line of a field, or of its nearest parent that has one (e.g. a missing optional key)."""
    while True:
        if path in c.lines:
            return c.lines[path]
        if not path:
            return None
        path = path[:-1]


# ---------------------------------------------------------------------------------------------------
# Lint


@dataclass(frozen=True)
class LintWarning:
    """Something that loads fine but is likely a mistake; printed like a ConstitutionError."""

    code: str
    field: str
    message: str
    source: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        parts = []
        if self.source is not None:
            parts.append(self.source if self.line is None else f"{self.source}:{self.line}")
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)


def lint(c: Constitution, *, rl_cai: bool = False) -> list[LintWarning]:
    """Warnings for a loaded constitution, in file order within each kind of check.

    ``rl_cai`` asks for the checks that only matter when the constitution also labels preferences.
    """
    found: list[LintWarning] = []

    def warn(code: str, path: FieldPath, message: str) -> None:
        found.append(LintWarning(code, _format_path(path), message, c.source, _line(c, path)))

    if rl_cai:
        for i, p in enumerate(c.principles):
            if p.comparison is None:
                warn(
                    "missing-comparison",
                    ("principles", i),
                    f"principle {p.id!r} has no comparison question, so RL-CAI preference labelling cannot use it",
                )

    for i, j, ratio in _near_duplicates(c.principles):
        a, b = c.principles[i], c.principles[j]
        first_line = _line(c, ("principles", i))
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
    texts = [f"{p.critique}\n{p.revision}" for p in principles]
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


# ---------------------------------------------------------------------------------------------------
# Versions


def _core(version: str) -> tuple[int, int, int]:
    m = _SEMVER_RE.fullmatch(version)
    if m is None:
        raise ConstitutionError(f"{version!r} is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.0.0)")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def bump_version(version: str, level: Level) -> str:
    """The next version at ``level``; pre-release and build parts are dropped, as a release ends them."""
    major, minor, patch = _core(version)
    if level == "major":
        return f"{major + 1}.0.0"
    if level == "minor":
        return f"{major}.{minor + 1}.0"
    if level == "patch":
        return f"{major}.{minor}.{patch + 1}"
    return version


def version_change(old: str, new: str) -> str:
    """The bump level from ``old`` to ``new``, or ``"downgrade"``.

    Only MAJOR.MINOR.PATCH counts: pre-release and build parts do not make a bump, so 1.1.0-rc.1 to
    1.1.0-rc.2 is "none". That is strict on purpose, constitutions are rarely pre-released.
    """
    a, b = _core(old), _core(new)
    if b < a:
        return "downgrade"
    if b[0] != a[0]:
        return "major"
    if b[1] != a[1]:
        return "minor"
    if b[2] != a[2]:
        return "patch"
    return "none"


# ---------------------------------------------------------------------------------------------------
# Semantic diff


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


def _principle_dict(p: Principle) -> dict[str, Any]:
    return {
        "id": p.id,
        "critique": p.critique,
        "revision": p.revision,
        "comparison": p.comparison,
        "tags": list(p.tags),
        "weight": p.weight,
    }


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
                "added": [_principle_dict(p) for p in self.added],
                "removed": [_principle_dict(p) for p in self.removed],
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


# ---------------------------------------------------------------------------------------------------
# Rendering

_RED, _GREEN, _YELLOW, _BOLD, _RESET = "\033[31m", "\033[32m", "\033[33m", "\033[1m", "\033[0m"


def _short(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[" + ", ".join(value) + "]"
    if isinstance(value, dict) and set(value) == {"role", "content"}:
        return f"{value['role']}: {value['content']}"
    if isinstance(value, list):
        return f"example with {len(value)} messages"
    return str(value)


def _words_text(words: Sequence[WordOp], color: bool) -> str:
    parts = []
    for op, text in words:
        if op == "equal":
            parts.append(text)
        elif op == "delete":
            parts.append(f"{_RED}{text}{_RESET}" if color else f"[-{text}-]")
        else:
            parts.append(f"{_GREEN}{text}{_RESET}" if color else f"{{+{text}+}}")
    # git's word-diff style: a replacement reads as [-old-]{+new+}, with no space between the two.
    out = ""
    for k, part in enumerate(parts):
        glue = "" if k and words[k - 1][0] == "delete" and words[k][0] == "insert" else " "
        out += (glue if out else "") + part
    return out


def _field_text(change: FieldChange, color: bool) -> str:
    if change.words is not None and change.old is not None and change.new is not None:
        return _words_text(change.words, color)
    old, new = _short(change.old), _short(change.new)
    if color:
        old, new = f"{_RED}{old}{_RESET}", f"{_GREEN}{new}{_RESET}"
    if change.old is None:
        return f"added: {new}"
    if change.new is None:
        return f"removed: {old}"
    return f"{old} -> {new}"


def render_text(d: ConstitutionDiff, *, color: bool = False) -> str:
    """For a terminal; without colour, deletions read ``[-word-]`` and insertions ``{+word+}``."""

    def paint(code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if color else text

    lines = [
        paint(_BOLD, f"--- {d.old.source or '<old>'}  {d.old.identity}"),
        paint(_BOLD, f"+++ {d.new.source or '<new>'}  {d.new.identity}"),
        "",
    ]
    for p in d.removed:
        lines.append(paint(_RED, f"removed principle {p.id}"))
        lines += [paint(_RED, f"    {name}: {getattr(p, name)}") for name in TEXT_FIELDS if getattr(p, name)]
    for p in d.added:
        lines.append(paint(_GREEN, f"added principle {p.id}"))
        lines += [paint(_GREEN, f"    {name}: {getattr(p, name)}") for name in TEXT_FIELDS if getattr(p, name)]
        if p.tags:
            lines.append(paint(_GREEN, f"    tags: {_short(list(p.tags))}"))
        if p.weight != 1.0:
            lines.append(paint(_GREEN, f"    weight: {p.weight:g}"))
    for ch in d.changed:
        lines.append(paint(_YELLOW, f"{'reworded' if ch.reworded else 'changed'} principle {ch.id}"))
        lines += [f"    {f.field}: {_field_text(f, color)}" for f in ch.fields]
    if d.reordered:
        lines.append(paint(_YELLOW, "reordered principles"))
        lines.append(f"    old: {' '.join(p.id for p in d.old.principles)}")
        lines.append(f"    new: {' '.join(p.id for p in d.new.principles)}")
    for f in d.metadata:
        lines.append(paint(_YELLOW, f"changed {f.field}") + f": {_field_text(f, color)}")
    for entry in d.changelog_added:
        lines.append(f"changelog {entry['version']}: {entry['message']}")
    if not d.content_changed:
        lines.append(f"no content change (sha256:{d.new.content_hash[:12]})")

    lines.append("")
    lines.append(f"version: {d.old.version} -> {d.new.version} ({_describe_actual(d.actual_bump)})")
    lines.append(f"needed:  {_describe_needed(d)}")
    if d.sufficient:
        lines.append(paint(_GREEN, "version bump: ok"))
    else:
        lines.append(paint(_RED, f"version bump: NOT SUFFICIENT; {_advice(d)}"))
    return "\n".join(lines) + "\n"


def _describe_actual(actual: str) -> str:
    return {"none": "no bump", "downgrade": "the version went down"}.get(actual, f"{actual} bump")


def _describe_needed(d: ConstitutionDiff) -> str:
    if d.required_bump == "none":
        return "no bump (no content change)"
    why = "; ".join(reason for level, reason in d.reasons if level == d.required_bump)
    return f"{d.required_bump} bump, to at least {d.suggested_version} ({why})"


def _advice(d: ConstitutionDiff) -> str:
    if d.actual_bump == "downgrade" and d.required_bump == "none":
        return f"the version must not go down from {d.old.version}"
    return f"a {d.required_bump} change needs version {d.suggested_version} or later"


_MD_SPECIAL = re.compile(r"([\\`*_~\[\]<>|#])")


def _md(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", text)


def _md_field(change: FieldChange) -> str:
    if change.words is not None and change.old is not None and change.new is not None:
        parts = []
        for op, text in change.words:
            t = _md(text)
            parts.append(t if op == "equal" else f"~~{t}~~" if op == "delete" else f"**{t}**")
        return " ".join(parts)
    if change.old is None:
        return f"added: **{_md(_short(change.new))}**"
    if change.new is None:
        return f"removed: ~~{_md(_short(change.old))}~~"
    return f"~~{_md(_short(change.old))}~~ → **{_md(_short(change.new))}**"


def render_markdown(d: ConstitutionDiff) -> str:
    """For a pull-request comment: deletions ~~struck~~, insertions **bold**."""
    status = "ok" if d.sufficient else "**not sufficient**"
    lines = [
        f"### Constitution `{d.new.name}`: {d.old.version} → {d.new.version}",
        "",
        "| | identity | source |",
        "|---|---|---|",
        f"| old | `{d.old.identity}` | `{d.old.source or ''}` |",
        f"| new | `{d.new.identity}` | `{d.new.source or ''}` |",
        "",
        f"**Needed:** {_md(_describe_needed(d))}  ",
        f"**Version change:** {d.old.version} → {d.new.version} ({_describe_actual(d.actual_bump)}): {status}",
    ]
    if d.reasons:
        lines.append("")
        lines += [f"- {level}: {_md(why)}" for level, why in d.reasons]
    if d.removed:
        lines += ["", "#### Removed principles", ""]
        for p in d.removed:
            lines.append(f"- `{p.id}`")
            lines += [f"  - {name}: ~~{_md(getattr(p, name))}~~" for name in TEXT_FIELDS if getattr(p, name)]
    if d.added:
        lines += ["", "#### Added principles", ""]
        for p in d.added:
            lines.append(f"- `{p.id}`" + (f" ({_md(', '.join(p.tags))})" if p.tags else ""))
            lines += [f"  - {name}: **{_md(getattr(p, name))}**" for name in TEXT_FIELDS if getattr(p, name)]
    if d.changed:
        lines += ["", "#### Changed principles", ""]
        for ch in d.changed:
            lines.append(f"- `{ch.id}`")
            lines += [f"  - {f.field}: {_md_field(f)}" for f in ch.fields]
    other = [f"- {f.field}: {_md_field(f)}" for f in d.metadata]
    if d.reordered:
        other.append(f"- principle order: {' '.join(f'`{p.id}`' for p in d.new.principles)}")
    if other:
        lines += ["", "#### Other changes", "", *other]
    if d.changelog_added:
        lines += ["", "#### Changelog", ""]
        lines += [f"- {e['version']}: {_md(e['message'])}" for e in d.changelog_added]
    if not d.content_changed:
        lines += ["", f"No content change (`sha256:{d.new.content_hash[:12]}`)."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# Sources: files and git revisions


def split_source(spec: str) -> tuple[str, str | None]:
    """``path@rev`` -> (path, rev); a plain path -> (path, None).

    An existing file wins, so a file whose name has an '@' is never misread. Otherwise the split is at
    the first '@' after which the path ends in a constitution suffix, which keeps revisions that
    contain '@' themselves (``file.yaml@main@{1}``) whole.
    """
    if os.path.exists(spec):
        return spec, None
    for m in re.finditer("@", spec):
        path, rev = spec[: m.start()], spec[m.start() + 1 :]
        if path and rev and path.lower().endswith(SUFFIXES):
            return path, rev
    return spec, None


def _git(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"}
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False, env=env)
    except FileNotFoundError:
        raise ConstitutionError("git is not installed (or not on PATH)") from None


def _git_text(path: str, rev: str) -> str | None:
    """The file's text at ``rev``, or None when the file does not exist there.

    ``rev:./relative`` is resolved by git relative to the working directory, so running git from the
    file's (nearest existing) directory handles paths given relative to any cwd inside the repo.
    """
    label = f"{path}@{rev}"
    target = Path(os.path.abspath(path))
    anchor = target.parent
    while not anchor.is_dir():
        anchor = anchor.parent
    rel = target.relative_to(anchor).as_posix()
    if _git(["rev-parse", "--show-toplevel"], anchor).returncode != 0:
        raise ConstitutionError(f"{anchor} is not inside a git repository", source=label)
    found = _git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"], anchor)
    if found.returncode != 0:
        raise ConstitutionError(f"unknown git revision {rev!r}", source=label)
    commit = found.stdout.decode().strip()
    if _git(["cat-file", "-e", f"{commit}:./{rel}"], anchor).returncode != 0:
        return None
    blob = _git(["cat-file", "blob", f"{commit}:./{rel}"], anchor)
    if blob.returncode != 0:
        raise ConstitutionError(f"is not a file at revision {rev!r}", source=label)
    try:
        return blob.stdout.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConstitutionError(f"not valid UTF-8 text ({e.reason})", source=label) from None


def load_at_revision(path: str, rev: str) -> Constitution | None:
    """The constitution as committed at ``rev``; None when the file is new since then."""
    text = _git_text(path, rev)
    if text is None:
        return None
    return parse_constitution_text(text, f"{path}@{rev}", suffix=Path(path).suffix)


def read_source(spec: str) -> Constitution:
    """Load ``path`` or ``path@gitrev`` (see :func:`split_source`)."""
    path, rev = split_source(spec)
    if rev is None:
        return load_constitution(path)
    c = load_at_revision(path, rev)
    if c is None:
        raise ConstitutionError(f"does not exist at revision {rev!r}", source=spec)
    return c


# ---------------------------------------------------------------------------------------------------
# check: a content change must come with a big enough version bump


@dataclass(frozen=True)
class CheckResult:
    path: str
    rev: str
    ok: bool
    message: str
    diff: ConstitutionDiff | None = None


def check_file(path: str, rev: str = "HEAD") -> CheckResult:
    """Compare the working file with ``rev``; a file that is new since ``rev`` passes."""
    new = load_constitution(path)
    old = load_at_revision(path, rev)
    if old is None:
        return CheckResult(path, rev, True, f"{path}: new since {rev} ({new.identity})")
    d = diff_constitutions(old, new)
    if not d.content_changed:
        if not d.sufficient:
            return CheckResult(path, rev, False, f"{path}: {_advice(d)} (at {rev}); it is now {new.version}", d)
        change = "" if old.version == new.version else f"; version {old.version} -> {new.version}"
        return CheckResult(path, rev, True, f"{path}: content unchanged since {rev}{change}", d)
    why = "; ".join(reason for _, reason in d.reasons)
    if d.sufficient:
        message = f"{path}: ok, {d.required_bump} change since {rev} ({why}); version {old.version} -> {new.version}"
        if not any(e["version"] == new.version for e in new.changelog):
            message += f" (note: no changelog entry for {new.version})"
        return CheckResult(path, rev, True, message, d)
    message = (
        f"{path}: content changed since {rev} but the version went {old.version} -> {new.version}; "
        f"it needs a {d.required_bump} bump to {d.suggested_version} or later because: {why}.\n"
        f"  fix: align constitution bump {path} --{d.required_bump} -m 'what changed'"
    )
    return CheckResult(path, rev, False, message, d)


# ---------------------------------------------------------------------------------------------------
# bump: targeted text edits, so comments and layout survive


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write via a temporary file and rename, so an interrupted write never leaves half a file."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if target.exists():
            os.chmod(tmp, target.stat().st_mode & 0o7777)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def bump_file(path: str | os.PathLike[str], level: Level, message: str) -> tuple[Constitution, Constitution]:
    """Raise the version at ``level`` and add a changelog entry; returns (before, after).

    YAML is edited as text (the ``version:`` line and one new changelog item) because re-dumping it
    would drop the comments that explain the principles. The result is reloaded and must equal the
    old constitution with just those two changes, or nothing is written.
    """
    source = os.fspath(path)
    if level not in ("major", "minor", "patch"):
        raise ConstitutionError(f"bump level must be major, minor or patch; got {level!r}")
    message = message.strip()
    if not message:
        raise ConstitutionError("the changelog message must not be empty", source=source)
    old = load_constitution(source)
    new_version = bump_version(old.version, level)
    if any(e["version"] == new_version for e in old.changelog):
        raise ConstitutionError(f"the changelog already has an entry for {new_version}", source=source)
    text = Path(source).read_text(encoding="utf-8")
    if Path(source).suffix.lower() == ".json":
        new_text = _bump_json(text, new_version, message)
    else:
        new_text = _bump_yaml(text, old, new_version, message)
    entry = {"version": new_version, "message": message}
    try:
        new = parse_constitution_text(new_text, source)
    except ConstitutionError as e:
        raise ConstitutionError(f"could not edit the file in place ({e}); nothing was written", source=source) from None
    expected = dataclasses.replace(old, version=new_version, changelog=(*old.changelog, entry))
    if new != expected:
        raise ConstitutionError(
            "could not edit the file in place (its layout is unusual); nothing was written: "
            f"set version to {new_version} and add the changelog entry by hand",
            source=source,
        )
    write_atomic(source, new_text)
    return old, new


def _bump_json(text: str, new_version: str, message: str) -> str:
    data = json.loads(text)
    data["version"] = new_version
    data.setdefault("changelog", []).append({"version": new_version, "message": message})
    m = re.search(r"\n([ \t]+)\S", text)
    indent: int | str | None = None
    if m:
        indent = "\t" if "\t" in m.group(1) else len(m.group(1))
    out = json.dumps(data, indent=indent, ensure_ascii=False)
    return out + "\n" if text.endswith("\n") else out


def _bump_yaml(text: str, old: Constitution, new_version: str, message: str) -> str:
    if not text.endswith("\n"):
        text += "\n"
    lines = text.splitlines(keepends=True)
    line_no = old.lines.get(("version",))
    version_re = re.compile(r"""(\bversion["']?\s*:\s*)(["']?)""" + re.escape(old.version) + r"\2")
    m = version_re.search(lines[line_no - 1]) if line_no else None
    if m is None:
        raise ConstitutionError("cannot find the version line to edit; edit it by hand", source=old.source)
    line = lines[line_no - 1]
    lines[line_no - 1] = line[: m.start()] + m.group(1) + m.group(2) + new_version + m.group(2) + line[m.end() :]
    text = "".join(lines)

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    entry_flow = f"{{version: {new_version}, message: {json.dumps(message, ensure_ascii=False)}}}"
    changelog = next((v for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value == "changelog"), None)
    if changelog is None:
        dash = _dash_column(text, root, "principles")
        return (
            text
            + "\nchangelog:\n"
            + f"{' ' * dash}- version: {new_version}\n"
            + f"{' ' * (dash + 2)}message: {json.dumps(message, ensure_ascii=False)}\n"
        )
    if changelog.flow_style:
        close = changelog.end_mark.index - 1
        if text[close] != "]":
            raise ConstitutionError("cannot find the end of the changelog list", source=old.source)
        glue = ", " if changelog.value else ""
        return text[:close] + glue + entry_flow + text[close:]

    last = changelog.value[-1]
    end = _content_end(last)
    at = end.line + (1 if end.column > 0 else 0)
    lines = text.splitlines(keepends=True)
    while at > last.start_mark.line + 1 and not lines[at - 1].strip():
        at -= 1  # block scalars swallow trailing blank lines; keep the new entry next to the last one
    dash = _dash_column(text, root, "changelog")
    if isinstance(last, yaml.MappingNode) and not last.flow_style:
        indent = " " * last.start_mark.column
        item = f"{' ' * dash}- version: {new_version}\n{indent}message: {json.dumps(message, ensure_ascii=False)}\n"
    else:
        item = f"{' ' * dash}- {entry_flow}\n"
    lines.insert(at, item)
    return "".join(lines)


def _content_end(node: yaml.Node) -> yaml.Mark:
    """Where a node's last character is; block collections' own end marks can lie past comments."""
    if isinstance(node, yaml.ScalarNode) or getattr(node, "flow_style", False) or not node.value:
        return node.end_mark
    last = node.value[-1]
    return _content_end(last[1] if isinstance(last, tuple) else last)


def _dash_column(text: str, root: yaml.MappingNode, key: str) -> int:
    """Column of the '- ' of a block list's items, to match the file's own indentation (default 2)."""
    node = next((v for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value == key), None)
    if not isinstance(node, yaml.SequenceNode) or node.flow_style or not node.value:
        return 2
    first = node.value[0].start_mark
    line = text.splitlines()[first.line]
    dash = line.rfind("-", 0, first.column)
    return dash if dash >= 0 else 2


# ---------------------------------------------------------------------------------------------------
# Foreign layouts


@dataclass(frozen=True)
class Imported:
    """An imported constitution and what the import could not carry over, for the user to review."""

    constitution: Constitution
    notes: tuple[str, ...] = ()
    unpaired_comparisons: tuple[str, ...] = ()


def _read_json(path: str | os.PathLike[str]) -> tuple[Any, _Validator]:
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConstitutionError("file not found", source=source) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConstitutionError(f"cannot read file: {e}", source=source) from None
    data, lines = _parse_json(text, source)
    return data, _Validator(source, lines)


def _needs_mapping(v: _Validator, value: Any, path: FieldPath, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise v.error(path, f"{what}; got {type(value).__name__}")
    return value


def _messages(v: _Validator, raw: Any, path: FieldPath) -> list[dict[str, str]]:
    out = []
    for j, msg in enumerate(v.sequence(raw, path)):
        mpath = (*path, j)
        msg = _needs_mapping(v, msg, mpath, "a message must be an object with role and content")
        if "role" not in msg or "content" not in msg:
            raise v.error(mpath, "a message needs both 'role' and 'content'")
        if msg["role"] not in ROLES:
            raise v.error((*mpath, "role"), f"must be one of {', '.join(ROLES)}; got {msg['role']!r}")
        out.append({"role": msg["role"], "content": v.text(msg["content"], (*mpath, "content"))})
    return out


def _system_chat(v: _Validator, raw: Any) -> list[dict[str, Any]]:
    """llm-swarm's few-shot block, read in each shape seen in the wild.

    Its own script flattens ``system_chat`` into one chat, so both a list of conversations and a single
    flat list of messages mean the same thing to it; conversations wrapped as ``{"messages": [...]}``
    are accepted too.
    """
    items = v.sequence(raw, ("system_chat",))
    if items and all(isinstance(m, Mapping) and "role" in m for m in items):
        return [{"messages": _messages(v, items, ("system_chat",))}]
    conversations = []
    for i, conv in enumerate(items):
        path: FieldPath = ("system_chat", i)
        if isinstance(conv, Mapping) and "messages" in conv:
            conv, path = conv["messages"], (*path, "messages")
        messages = _messages(v, conv, path)
        if messages:
            conversations.append({"messages": messages})
    return conversations


def import_llm_swarm(path: str | os.PathLike[str], *, name: str, version: str = "1.0.0") -> Imported:
    """Read llm-swarm's ``{"constitutions": [{"critic", "revision"}], "system_chat": [...]}`` layout.

    It has no ids, so principles get ``principle-1``, ``principle-2``... in file order: stable as long as
    the source file's order is, which is what a later re-import and diff need.
    """
    data, v = _read_json(path)
    root = _needs_mapping(v, data, (), "an llm-swarm constitution is a JSON object with 'constitutions'")
    if "constitutions" not in root:
        raise v.error(("constitutions",), "missing required key 'constitutions'")
    notes = [f"ignored top-level key {k!r}" for k in root if k not in ("constitutions", "system_chat")]
    principles = []
    for i, item in enumerate(v.sequence(root["constitutions"], ("constitutions",))):
        ipath: FieldPath = ("constitutions", i)
        item = _needs_mapping(v, item, ipath, "must be an object with 'critic' and 'revision'")
        critic_key = "critic" if "critic" in item else "critique" if "critique" in item else None
        if critic_key is None or "revision" not in item:
            missing = "critic" if critic_key is None else "revision"
            raise v.error((*ipath, missing), f"missing required key {missing!r}")
        notes += [f"constitutions[{i}]: ignored key {k!r}" for k in item if k not in (critic_key, "revision")]
        principles.append(
            {
                "id": f"principle-{i + 1}",
                "critique": v.text(item[critic_key], (*ipath, critic_key)),
                "revision": v.text(item["revision"], (*ipath, "revision")),
            }
        )
    source = os.fspath(path)
    few_shot = _system_chat(v, root.get("system_chat", []))
    data = _constitution_data(name, version, source, "llm-swarm", principles, few_shot)
    return Imported(load_constitution_data(data, source=f"{source} (imported)"), tuple(notes))


def _normalise_id(key: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")


def import_anthropic(
    path: str | os.PathLike[str],
    comparisons: str | os.PathLike[str] | None = None,
    *,
    name: str,
    version: str = "1.0.0",
) -> Imported:
    """Read the paper's layout: ``{"key": {"prompt": [critique], "edit_request": revision}}``.

    Comparison questions (a separate JSON list) were written as a separate list in the paper, not per
    principle, so pairing is by position: with equal counts each principle gets its question. With
    unequal counts the first principles get the questions in order; principles left without one are
    reported (``validate --rl-cai`` flags them too), and surplus questions are returned in
    ``unpaired_comparisons`` rather than dropped or turned into principles, because a principle needs
    a critique and a revision that nobody wrote. The CLI keeps them as comments in the YAML it writes.
    """
    data, v = _read_json(path)
    root = _needs_mapping(v, data, (), "the file must be a JSON object of named critique/revision requests")
    notes: list[str] = []
    principles = []
    used: set[str] = set()
    for k, (key, entry) in enumerate(root.items()):
        epath: FieldPath = (key,)
        entry = _needs_mapping(v, entry, epath, "must be an object with 'prompt' and 'edit_request'")
        for required in ("prompt", "edit_request"):
            if required not in entry:
                raise v.error((*epath, required), f"missing required key {required!r}")
        prompt = entry["prompt"]
        if isinstance(prompt, list):
            if not prompt:
                raise v.error((*epath, "prompt"), "needs at least one critique request")
            if len(prompt) > 1:
                notes.append(f"{key}: {len(prompt)} critique phrasings; kept the first")
            critique = v.text(prompt[0], (*epath, "prompt", 0))
        else:
            critique = v.text(prompt, (*epath, "prompt"))
        base = _normalise_id(str(key)) or f"principle-{k + 1}"
        pid, n = base, 2
        while pid in used:
            pid, n = f"{base}-{n}", n + 1
        used.add(pid)
        if pid != key:
            notes.append(f"{key}: id written as {pid!r}")
        notes += [f"{key}: ignored key {x!r}" for x in entry if x not in ("prompt", "edit_request")]
        principles.append(
            {"id": pid, "critique": critique, "revision": v.text(entry["edit_request"], (*epath, "edit_request"))}
        )
    if not principles:
        raise v.error((), "no critique/revision requests found")

    unpaired: list[str] = []
    if comparisons is not None:
        cdata, cv = _read_json(comparisons)
        questions = [cv.text(q, (i,)) for i, q in enumerate(cv.sequence(cdata, ()))]
        for p, q in zip(principles, questions):
            p["comparison"] = q
        if len(questions) < len(principles):
            left = [p["id"] for p in principles[len(questions) :]]
            notes.append(
                f"{len(questions)} comparison questions for {len(principles)} principles; "
                f"without one: {', '.join(left)}"
            )
        unpaired = questions[len(principles) :]
        if unpaired:
            notes.append(f"{len(unpaired)} comparison questions had no principle to pair with (kept aside)")

    source = os.fspath(path)
    data = _constitution_data(name, version, source, "Anthropic paper", principles, [])
    return Imported(load_constitution_data(data, source=f"{source} (imported)"), tuple(notes), tuple(unpaired))


def _constitution_data(
    name: str, version: str, source: str, layout: str, principles: list[dict[str, Any]], few_shot: list[dict[str, Any]]
) -> dict[str, Any]:
    origin = f"Imported from {Path(source).name} ({layout} layout)."
    return {
        "name": name,
        "version": version,
        "description": origin,
        "principles": principles,
        "few_shot": few_shot,
        "changelog": [{"version": version, "message": origin}],
    }


def export_llm_swarm(c: Constitution) -> tuple[dict[str, Any], list[str]]:
    """llm-swarm's layout, and notes on what it cannot hold (it has no ids, comparisons or weights)."""
    data = {
        "constitutions": [{"critic": p.critique, "revision": p.revision} for p in c.principles],
        "system_chat": [[dict(m) for m in conv] for conv in c.few_shot],
    }
    notes = ["principle ids, tags, name, version and description are not part of the llm-swarm layout"]
    compared = sum(p.comparison is not None for p in c.principles)
    if compared:
        notes.append(f"dropped {compared} comparison questions (llm-swarm only critiques and revises)")
    if any(p.weight != 1.0 for p in c.principles):
        notes.append("dropped principle weights: llm-swarm picks principles uniformly")
    return data, notes


def dump_constitution(
    c: Constitution, suffix: str, *, comments: Sequence[str] = (), trailer: Sequence[str] = ()
) -> str:
    """Our own file layout for a constitution, with defaults left out so the file stays short.

    ``comments`` go at the top and ``trailer`` at the end of YAML output; JSON cannot hold them.
    """
    data = c.to_dict()
    for p in data["principles"]:
        if not p["tags"]:
            del p["tags"]
        if p["weight"] == 1.0:
            del p["weight"]
    for key in ("few_shot", "changelog"):
        if not data[key]:
            del data[key]
    if suffix.lower() == ".json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    body = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=4096, default_flow_style=False)
    head = "".join(f"# {line}\n" for line in comments)
    tail = "".join(f"# {line}\n" for line in trailer)
    return head + body + ("\n" + tail if tail else "")
