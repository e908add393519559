"""Other projects' constitution layouts: import from llm-swarm and the Anthropic paper, export to llm-swarm.

Files in our own layout are written by :func:`align.constitution.edit.dump_constitution`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align.constitution.model import (
    ROLES,
    Constitution,
    ConstitutionError,
    FieldPath,
    _parse_json,
    _Validator,
    load_constitution_data,
)

__all__ = ["Imported", "export_llm_swarm", "import_anthropic", "import_llm_swarm"]


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
