"""Writing constitution files: version bumps, our own layout, atomic writes.

A bump is a targeted text edit, so comments and layout survive (see :func:`bump_file`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import yaml

from align.constitution.model import Constitution, ConstitutionError, load_constitution, parse_constitution_text
from align.constitution.versions import Level, bump_version
from align.files import write_text_atomic

__all__ = ["bump_file", "dump_constitution"]


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
    write_text_atomic(source, new_text)
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


def dump_constitution(
    c: Constitution, suffix: str, *, comments: Sequence[str] = (), trailer: Sequence[str] = ()
) -> str:
    """Our own file layout for a constitution, with defaults left out so the file stays short.

    The data goes through the YAML (or JSON) library, never through string splicing: text imported from
    another project's file can hold anything, newlines included. ``comments`` (for the top) and
    ``trailer`` (for the end) become YAML comments, every physical line of them commented out, and JSON
    cannot hold them. The text is parsed back before it is returned and must be ``c`` itself, so what a
    caller writes and the identity it prints are the file's.
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
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    else:
        body = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=4096, default_flow_style=False)
        head = "".join(_comment(line) for line in comments)
        tail = "".join(_comment(block) for block in trailer)
        text = head + body + ("\n" + tail if tail else "")
    written = parse_constitution_text(text, f"<{c.name} as {suffix}>", suffix=suffix)
    if written.content_hash != c.content_hash:
        raise ConstitutionError(f"{c.name}: the written file would not hold the same constitution; nothing was written")
    return text


def _comment(text: str) -> str:
    """``text`` as YAML comment lines. ``splitlines`` breaks at every line break YAML knows (and more)."""
    return "".join(f"# {line}".rstrip() + "\n" for line in text.splitlines() or [""])
