"""A :class:`~align.constitution.diff.ConstitutionDiff` for people: a terminal, or a pull-request comment."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from align.constitution.diff import TEXT_FIELDS, ConstitutionDiff, FieldChange, WordOp

__all__ = ["render_markdown", "render_text"]

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
