"""Constitutions: the written principles behind critiques, revisions and AI preference labels.

A constitution is data, not code, so that the principles can be read, reviewed and versioned on their
own. Its identity (``name@version+sha256:<hash>``) ties every generated sample to the exact text that
produced it, and each principle carries its own content hash, so a new constitution version only
needs to regenerate the samples whose principle actually changed.

Loading is strict: a typo in a field name or a bad value would otherwise silently change what the
model is trained on, so every problem is reported with the file, the line and the field path.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import random
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Constitution",
    "ConstitutionError",
    "Principle",
    "load_constitution",
    "load_constitution_data",
    "parse_constitution_text",
]

FieldPath = tuple[Any, ...]

ROLES = ("system", "user", "assistant")
SUFFIXES = (".yaml", ".yml", ".json")

_TOP_REQUIRED = ("name", "version", "principles")
_TOP_OPTIONAL = ("description", "few_shot", "changelog")
_PRINCIPLE_REQUIRED = ("id", "critique", "revision")
_PRINCIPLE_OPTIONAL = ("comparison", "tags", "weight")
_CONVERSATION_KEYS = ("messages",)
_MESSAGE_KEYS = ("role", "content")
_CHANGELOG_KEYS = ("version", "message")

_ID_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
# Names end up in identity strings (name@version+sha256:...) and in run directories.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SEMVER_RE = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)
_YAML_MERGE_TAG = "tag:yaml.org,2002:merge"


class ConstitutionError(ValueError):
    """A constitution file or data structure that cannot be used.

    The message starts with ``<file>:<line>: <field path>: `` (each part when known) so that editors and
    terminals can jump straight to the problem; the parts are also kept as attributes for callers that
    want to present them differently.
    """

    def __init__(
        self,
        problem: str,
        *,
        source: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.problem = problem
        self.source = source
        self.line = line
        self.field = field
        # Only the full message goes into args, so the error pickles (e.g. across processes) intact.
        super().__init__(_locate(problem, source=source, line=line, field=field))


def _locate(problem: str, *, source: str | None, line: int | None, field: str | None) -> str:
    """``<file>:<line>: <field path>: <problem>``, each part when known (lint warnings read the same)."""
    parts = []
    if source is not None:
        parts.append(source if line is None else f"{source}:{line}")
    if field:
        parts.append(field)
    parts.append(problem)
    return ": ".join(parts)


def _canonical_json(obj: Any) -> bytes:
    """One byte string per content, whatever the file's key order, comments, quoting or format."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


@dataclass(frozen=True)
class Principle:
    """One rule, phrased as the three requests the model is asked: critique, revision, comparison."""

    id: str
    critique: str
    revision: str
    comparison: str | None = None
    tags: tuple[str, ...] = ()
    weight: float = 1.0

    def __post_init__(self) -> None:
        # Accept lists and ints from callers, but store one form so equality and hashes agree.
        object.__setattr__(self, "tags", tuple(self.tags))
        object.__setattr__(self, "weight", float(self.weight))

    @property
    def content_hash(self) -> str:
        """Changes exactly when the text the model sees changes, so samples can be reused otherwise.

        Tags and weight only affect bookkeeping and sampling, not any generated text, so they are left
        out; changing them does not force regeneration.
        """
        payload = {"critique": self.critique, "revision": self.revision, "comparison": self.comparison}
        return hashlib.sha256(_canonical_json(payload)).hexdigest()[:12]


def _principle_content(p: Principle) -> dict[str, Any]:
    return {
        "id": p.id,
        "critique": p.critique,
        "revision": p.revision,
        "comparison": p.comparison,
        "tags": list(p.tags),
        "weight": p.weight,
    }


@dataclass(frozen=True)
class Constitution:
    """A validated, immutable constitution; build it with :func:`load_constitution`."""

    name: str
    version: str
    description: str
    principles: tuple[Principle, ...]
    few_shot: tuple[tuple[dict[str, str], ...], ...]
    changelog: tuple[dict[str, str], ...] = ()
    # Where it came from is not part of what it is: the same file copied elsewhere is equal.
    source: str | None = field(default=None, compare=False)
    # Field path -> 1-based line in the source file, so later checks (lint) can point at lines too.
    lines: Mapping[FieldPath, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "principles", tuple(self.principles))
        object.__setattr__(self, "few_shot", tuple(tuple(dict(m) for m in conv) for conv in self.few_shot))
        object.__setattr__(self, "changelog", tuple(dict(entry) for entry in self.changelog))

    def __hash__(self) -> int:
        # The generated field-wise hash would fail on the message dicts; this one agrees with ==.
        return hash((self.version, self.content_hash))

    @property
    def content_hash(self) -> str:
        """Hash of what shapes the generated data; version, changelog and source are left out.

        Leaving the version out means a version bump with no content change keeps the hash (and lets
        tooling notice a content change that forgot its version bump).
        """
        payload = {
            "name": self.name,
            "description": self.description,
            "principles": [_principle_content(p) for p in self.principles],
            "few_shot": [[dict(m) for m in conv] for conv in self.few_shot],
        }
        return hashlib.sha256(_canonical_json(payload)).hexdigest()

    @property
    def identity(self) -> str:
        """Human-readable and exact at once: the version for people, the hash for machines."""
        return f"{self.name}@{self.version}+sha256:{self.content_hash[:12]}"

    def principle(self, principle_id: str) -> Principle:
        """Look a principle up by its stable id (as stored with every generated sample)."""
        for p in self.principles:
            if p.id == principle_id:
                return p
        ids = ", ".join(p.id for p in self.principles)
        raise KeyError(f"no principle {principle_id!r} in {self.name}@{self.version}; its ids are: {ids}")

    def sample_principle(self, rng: random.Random) -> Principle:
        """Draw one principle in proportion to its weight.

        The caller passes the generator so that a seeded run draws the same principles every time,
        independent of any other use of the global ``random`` state.
        """
        return rng.choices(self.principles, weights=[p.weight for p in self.principles], k=1)[0]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON/YAML-safe) that :func:`load_constitution_data` turns back into an equal object."""
        principles = []
        for p in self.principles:
            d = _principle_content(p)
            if d["comparison"] is None:
                del d["comparison"]
            principles.append(d)
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "principles": principles,
            "few_shot": [{"messages": [dict(m) for m in conv]} for conv in self.few_shot],
            "changelog": [dict(entry) for entry in self.changelog],
        }


# ---------------------------------------------------------------------------------------------------
# Loading


def load_constitution(path: str | os.PathLike[str]) -> Constitution:
    """Read and validate a ``.yaml``/``.yml``/``.json`` constitution file.

    YAML is parsed with the safe loader only: a constitution is shared text and must never be able to
    construct arbitrary Python objects.
    """
    source = os.fspath(path)
    p = Path(source)
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConstitutionError(f"unsupported file type {p.suffix!r}; use one of {', '.join(SUFFIXES)}", source=source)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConstitutionError("file not found", source=source) from None
    except UnicodeDecodeError as e:
        raise ConstitutionError(f"not valid UTF-8 text ({e.reason})", source=source) from None
    except OSError as e:
        raise ConstitutionError(f"cannot read file: {e.strerror or e}", source=source) from None
    constitution = parse_constitution_text(text, source, suffix=suffix)
    for path, length in long_principle_fields(constitution):
        where = _locate("", source=source, line=_nearest_line(constitution.lines, path), field=_format_path(path))
        warnings.warn(f"{where}{long_principle_message(length)}", ConstitutionWarning, stacklevel=2)
    return constitution


class ConstitutionWarning(UserWarning):
    """A constitution that loads but is likely a mistake; ``validate`` reports the same through its lint."""


# Longer than any sensible instruction (the shipped ones are under 120 characters): usually a file pasted into
# a field by mistake. Every critique, revision and comparison prompt would carry it, so it is worth a warning.
PRINCIPLE_CHARS = 2000


def long_principle_fields(c: Constitution) -> list[tuple[FieldPath, int]]:
    """(field path, length) of every critique, revision or comparison longer than :data:`PRINCIPLE_CHARS`."""
    found = []
    for i, p in enumerate(c.principles):
        for name in ("critique", "revision", "comparison"):
            text = getattr(p, name)
            if text is not None and len(text) > PRINCIPLE_CHARS:
                found.append((("principles", i, name), len(text)))
    return found


def long_principle_message(length: int) -> str:
    return (
        f"{length:,} characters, over the {PRINCIPLE_CHARS:,} a principle should need (a sentence or two); "
        "every prompt built from it carries all of it"
    )


def parse_constitution_text(text: str, source: str, *, suffix: str | None = None) -> Constitution:
    """Validate constitution text that did not come straight from a file (e.g. ``git show rev:path``).

    ``suffix`` picks the parser; it defaults to the suffix of ``source``, which is wrong for labels
    such as ``harmless.yaml@HEAD``, hence the separate argument.
    """
    suffix = (Path(source).suffix if suffix is None else suffix).lower()
    if suffix not in SUFFIXES:
        raise ConstitutionError(f"unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}", source=source)
    if suffix == ".json":
        data, lines = _parse_json(text, source)
    else:
        data, lines = _parse_yaml(text, source)
    return _build(data, source, lines)


def load_constitution_data(data: dict[str, Any], source: str = "<data>") -> Constitution:
    """Validate already-parsed data (e.g. from a config or :meth:`Constitution.to_dict`).

    The same checks as for files apply; there are no line numbers, only field paths.
    """
    return _build(data, source, {})


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[FieldPath, int]]:
    """Compose the node tree first, so line numbers and duplicate keys are seen before data is built."""
    loader = yaml.SafeLoader(text)
    key_loader = yaml.SafeLoader("")
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines = _index_nodes(node, key_loader, source)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "cannot parse"
        if e.context and e.context_mark is not None and mark is not e.context_mark:
            problem += f" ({e.context} on line {e.context_mark.line + 1})"
        raise ConstitutionError(
            f"invalid YAML: {problem}", source=source, line=mark.line + 1 if mark else None
        ) from None
    except yaml.YAMLError as e:
        raise ConstitutionError(f"invalid YAML: {e}", source=source) from None
    finally:
        loader.dispose()
        key_loader.dispose()
    return data, lines


def _parse_json(text: str, source: str) -> tuple[Any, dict[FieldPath, int]]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise ConstitutionError(f"duplicate key {k!r}", source=source)
            out[k] = v
        return out

    try:
        data = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise ConstitutionError(f"invalid JSON: {e.msg}", source=source, line=e.lineno) from None
    # Line numbers are a convenience for JSON: most JSON is also YAML, whose parser keeps positions.
    # When that parse succeeds it has the same structure, so its lines are right; otherwise go without.
    try:
        loader = yaml.SafeLoader(text)
        key_loader = yaml.SafeLoader("")
        try:
            node = loader.get_single_node()
            lines = _index_nodes(node, key_loader, source) if node is not None else {}
        finally:
            loader.dispose()
            key_loader.dispose()
    except (yaml.YAMLError, ConstitutionError):
        lines = {}
    return data, lines


def _index_nodes(root: yaml.Node, key_loader: yaml.SafeLoader, source: str) -> dict[FieldPath, int]:
    """Map each field path to its 1-based line, and reject duplicate keys (PyYAML keeps the last).

    Mapping entries get the line of their key, sequence items the line where the item starts. Nodes
    reached again through an alias are not re-indexed (this also stops on recursive aliases); lookups
    fall back to the nearest indexed parent. Keys brought in by a ``<<`` merge are treated the same way.
    """
    lines: dict[FieldPath, int] = {(): root.start_mark.line + 1}
    seen_nodes: set[int] = set()
    stack: list[tuple[FieldPath, yaml.Node]] = [((), root)]
    while stack:
        path, node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _YAML_MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = key_loader.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in first_line:
                    raise ConstitutionError(
                        f"duplicate key {key!r} (first on line {first_line[key]})",
                        source=source,
                        line=line,
                        field=_format_path((*path, key)),
                    )
                first_line[key] = line
                lines[(*path, key)] = line
                stack.append(((*path, key), value_node))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*path, i)] = item.start_mark.line + 1
                stack.append(((*path, i), item))
    return lines


def _nearest_line(lines: Mapping[FieldPath, int], path: FieldPath) -> int | None:
    """The line of a field, or of its nearest parent that has one (e.g. a missing optional key)."""
    while True:
        if path in lines:
            return lines[path]
        if not path:
            return None
        path = path[:-1]


def _format_path(path: FieldPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else f"the string {value!r}"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


class _Validator:
    """Checks plain data and raises errors that point at the offending line and field."""

    def __init__(self, source: str, lines: dict[FieldPath, int]) -> None:
        self.source = source
        self.lines = lines

    def line(self, path: FieldPath) -> int | None:
        return _nearest_line(self.lines, path)

    def error(self, path: FieldPath, problem: str) -> ConstitutionError:
        return ConstitutionError(problem, source=self.source, line=self.line(path), field=_format_path(path))

    def mapping(self, value: Any, path: FieldPath, keys: tuple[str, ...], required: tuple[str, ...]) -> Mapping:
        if not isinstance(value, Mapping):
            what = "the top level" if not path else "it"
            raise self.error(path, f"{what} must be a mapping with keys {', '.join(keys)}; got {_describe(value)}")
        for key in value:
            if key not in keys:
                hint = difflib.get_close_matches(str(key), keys, n=1)
                did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise self.error((*path, key), f"unknown key {key!r}{did_you_mean}; valid keys are: {', '.join(keys)}")
        for key in required:
            if key not in value:
                raise self.error((*path, key), f"missing required key {key!r}")
        return value

    def sequence(self, value: Any, path: FieldPath) -> list[Any] | tuple[Any, ...]:
        if not isinstance(value, (list, tuple)):
            raise self.error(path, f"must be a list; got {_describe(value)}")
        return value

    def text(self, value: Any, path: FieldPath) -> str:
        """Surrounding whitespace is formatting (e.g. YAML block scalars end in a newline), not content."""
        if not isinstance(value, str) or not value.strip():
            raise self.error(path, f"must be a non-empty string; got {_describe(value)}")
        return value.strip()

    def version(self, value: Any, path: FieldPath) -> str:
        if not isinstance(value, str):
            hint = ' (quote it, e.g. "1.0.0")' if isinstance(value, (int, float)) else ""
            raise self.error(path, f"must be a semantic version string like 1.0.0{hint}; got {_describe(value)}")
        if not _SEMVER_RE.fullmatch(value):
            raise self.error(path, f"{value!r} is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.0.0)")
        return value


def _build(data: Any, source: str, lines: dict[FieldPath, int]) -> Constitution:
    v = _Validator(source, lines)
    root = v.mapping(data, (), _TOP_REQUIRED + _TOP_OPTIONAL, _TOP_REQUIRED)

    name = v.text(root["name"], ("name",))
    if not _NAME_RE.fullmatch(name):
        raise v.error(
            ("name",),
            f"{name!r} is not a valid name: use letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    version = v.version(root["version"], ("version",))
    description = root.get("description", "")
    if not isinstance(description, str):
        raise v.error(("description",), f"must be a string; got {_describe(description)}")

    raw_principles = v.sequence(root["principles"], ("principles",))
    if not raw_principles:
        raise v.error(("principles",), "a constitution needs at least one principle")
    principles = []
    first_index: dict[str, int] = {}
    for i, raw in enumerate(raw_principles):
        path: FieldPath = ("principles", i)
        principles.append(_build_principle(v, raw, path))
        pid = principles[-1].id
        if pid in first_index:
            j = first_index[pid]
            first_line = v.line(("principles", j, "id"))
            where = f"principles[{j}]" + (f" on line {first_line}" if first_line is not None else "")
            raise v.error((*path, "id"), f"duplicate principle id {pid!r}; already used by {where}")
        first_index[pid] = i

    few_shot = []
    for i, raw in enumerate(v.sequence(root.get("few_shot", []), ("few_shot",))):
        path = ("few_shot", i)
        conv = v.mapping(raw, path, _CONVERSATION_KEYS, _CONVERSATION_KEYS)
        messages = v.sequence(conv["messages"], (*path, "messages"))
        if not messages:
            raise v.error((*path, "messages"), "a conversation needs at least one message")
        built = []
        for j, msg in enumerate(messages):
            mpath = (*path, "messages", j)
            msg = v.mapping(msg, mpath, _MESSAGE_KEYS, _MESSAGE_KEYS)
            role = msg["role"]
            if role not in ROLES:
                raise v.error((*mpath, "role"), f"must be one of {', '.join(ROLES)}; got {_describe(role)}")
            built.append({"role": role, "content": v.text(msg["content"], (*mpath, "content"))})
        few_shot.append(tuple(built))

    changelog = []
    for i, raw in enumerate(v.sequence(root.get("changelog", []), ("changelog",))):
        path = ("changelog", i)
        entry = v.mapping(raw, path, _CHANGELOG_KEYS, _CHANGELOG_KEYS)
        changelog.append(
            {
                "version": v.version(entry["version"], (*path, "version")),
                "message": v.text(entry["message"], (*path, "message")),
            }
        )

    return Constitution(
        name=name,
        version=version,
        description=description.strip(),
        principles=tuple(principles),
        few_shot=tuple(few_shot),
        changelog=tuple(changelog),
        source=source,
        lines=lines,
    )


def _build_principle(v: _Validator, raw: Any, path: FieldPath) -> Principle:
    p = v.mapping(raw, path, _PRINCIPLE_REQUIRED + _PRINCIPLE_OPTIONAL, _PRINCIPLE_REQUIRED)
    pid = p["id"]
    if not isinstance(pid, str) or not _ID_RE.fullmatch(pid):
        raise v.error(
            (*path, "id"),
            f"must be lowercase letters and digits separated by single hyphens (e.g. dangerous-help); "
            f"got {_describe(pid)}",
        )
    # Checked in file order, so the first error reported is the first one in the file.
    critique = v.text(p["critique"], (*path, "critique"))
    revision = v.text(p["revision"], (*path, "revision"))
    comparison = v.text(p["comparison"], (*path, "comparison")) if "comparison" in p else None
    tags = [v.text(tag, (*path, "tags", i)) for i, tag in enumerate(v.sequence(p.get("tags", []), (*path, "tags")))]
    weight = p.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise v.error((*path, "weight"), f"must be a number; got {_describe(weight)}")
    if not math.isfinite(weight) or weight <= 0:
        raise v.error((*path, "weight"), f"must be a finite number > 0; got {weight}")
    return Principle(
        id=pid,
        critique=critique,
        revision=revision,
        comparison=comparison,
        tags=tuple(tags),
        weight=float(weight),
    )
