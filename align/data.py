"""Prompts in, clean prompt lists out: local files or Hugging Face datasets, in three common formats.

The pipeline only ever needs the user's first turn of each conversation, but prompt sets come as chat
``messages``, as a ``prompt`` column (TRL style) or as Anthropic HH-RLHF transcripts. Everything here
turns them into ``list[str]`` and fails loudly, naming the file, the row and the field, so that a bad
row is found before hours of generation run on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The writers live in align.files (one atomic-write helper); they are re-exported here for existing callers.
from align.files import WriteError, write_jsonl_atomic, write_text_atomic

__all__ = [
    "DataError",
    "WriteError",
    "check_text",
    "dataset_fingerprint",
    "limit_prompt_length",
    "load_preference_pairs",
    "load_prompts",
    "load_records",
    "parse_hh_transcript",
    "prompt_from_row",
    "read_jsonl",
    "write_jsonl_atomic",
    "write_text_atomic",
]

if TYPE_CHECKING:
    import datasets

# extension -> datasets builder that reads it
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
MESSAGE_COLUMNS = ("messages", "prompt")
TRANSCRIPT_COLUMNS = ("chosen", "text", "transcript")
ACCEPTED_COLUMNS = MESSAGE_COLUMNS + TRANSCRIPT_COLUMNS

# C0 and C1 control characters other than tab, newline and carriage return: never part of a prompt, and some
# (NUL above all) are cut or mangled by tokenizers, servers and terminals without an error.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_START = re.compile(r"\s*Human:")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


class DataError(ValueError):
    """Bad input data; the message names the file or dataset, the row and the field to fix."""


def load_prompts(
    source: str, *, split: str = "train", column: str | None = None, limit: int | None = None
) -> list[str]:
    """Return the first user turn of each row of `source`, stripped, in file order.

    Rows are numbered from 1 in error messages, like records in a JSONL file. Every row is checked
    (up to `limit`): a prompt set with a broken row is an error, not a smaller prompt set.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    ds = load_records(source, split=split)
    if len(ds) == 0:
        raise DataError(f"{source}: empty prompt file (no rows)")
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    prompts = []
    for i, row in enumerate(ds, start=1):
        try:
            prompts.append(prompt_from_row(row, column=column))
        except DataError as err:
            raise DataError(f"{source}: row {i}: {err}") from None
    return prompts


def load_records(source: str, *, split: str = "train") -> datasets.Dataset:
    """Load raw rows from a local file, a ``save_to_disk`` directory, or a hub id / dataset script.

    A single local file is one split by construction, so `split` only selects among the splits of a
    saved DatasetDict or of a hub dataset.
    """
    import datasets

    path = _local_path(source)
    if path is None or path.suffix == ".py":
        return _loaded(source, lambda: datasets.load_dataset(source, split=split))
    if path.is_dir():
        if not ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            return _folder(path, split)
        saved = _loaded(source, lambda: datasets.load_from_disk(str(path)))
        if isinstance(saved, datasets.DatasetDict):
            if split not in saved:
                raise DataError(f"{source}: no split {split!r}; splits found: {sorted(saved)}")
            return saved[split]
        return saved
    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{source}: unsupported extension {path.suffix!r}; supported: {', '.join(FILE_BUILDERS)}")
    # keep_default_na=False: a CSV prompt reading "NA" or "null" stays text instead of becoming None.
    kwargs = {"keep_default_na": False} if builder == "csv" else {}
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as err:  # datasets reports an empty file as StopIteration, ValueError, ...
        with open(path, "rb") as f:
            blank = not f.read(1 << 16).strip()
        if blank or "corresponds to no data" in str(err):
            raise DataError(f"{source}: empty prompt file (no rows)") from err
        raise DataError(f"{source}: cannot read as {builder}: {_reason(err)}") from err


def _loaded(source: str, load: Callable[[], Any]) -> Any:
    """``load()``, with whatever ``datasets`` raises (a folder of garbage, a hub id that cannot be reached, a
    damaged save) turned into a :class:`DataError` naming the source and the underlying reason."""
    try:
        return load()
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{source}: cannot load as a dataset: {_reason(err)}") from err


def _reason(err: BaseException) -> str:
    """The innermost message of an exception chain, on one line: datasets wraps the parser's own error."""
    inner = err.__cause__ or err.__context__
    while inner is not None and str(inner).strip():
        err, inner = inner, inner.__cause__ or inner.__context__
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _folder(path: Path, split: str) -> datasets.Dataset:
    """A folder of data files; if it cannot be read, the error names the first file that cannot."""
    import datasets

    try:
        return datasets.load_dataset(str(path), split=split)
    except Exception as err:
        for file in sorted(p for p in path.rglob("*") if p.suffix.lower() in FILE_BUILDERS and p.is_file()):
            load_records(str(file))  # raises a DataError naming this file if it is the broken one
        raise DataError(f"{path}: cannot load as a dataset: {_reason(err)}") from err


def load_preference_pairs(source: str, *, split: str = "train", limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of ``prompt``, ``chosen`` and ``rejected`` (strings or chat messages) as conversational pairs."""
    ds = load_records(source, split=split)
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in ds.column_names]
    if missing:
        raise DataError(f"{source}: preference pairs need columns prompt, chosen, rejected; missing {missing}")
    rows = []
    for i, row in enumerate(ds.select(range(min(limit, len(ds)))) if limit is not None else ds, start=1):
        try:
            prompt = prompt_from_row(row, column="prompt")
            chosen, rejected = (_reply(row[key], key) for key in ("chosen", "rejected"))
        except DataError as err:
            raise DataError(f"{source}: row {i}: {err}") from None
        rows.append(
            {
                "prompt": [{"role": "user", "content": prompt}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    return rows


def _reply(value: Any, field: str) -> str:
    """The assistant's answer: a string, or the last assistant turn of a message list."""
    if isinstance(value, list):
        turns = [m for m in value if isinstance(m, dict) and m.get("role") == "assistant"]
        if not turns:
            raise DataError(f"{field}: no assistant message")
        value = turns[-1].get("content")
    return check_text(value, field)


def prompt_from_row(row: dict[str, Any], *, column: str | None = None) -> str:
    """Detect the row's format and return its first user turn, stripped.

    Columns are tried in the order messages, prompt, chosen, text, transcript, so a preference row
    (prompt/chosen/rejected) yields its prompt. The first of them holding a value wins, which lets a
    JSONL file mix formats row by row.
    """
    if column is not None:
        if column not in row:
            raise DataError(f"field {column!r} not found; columns found: {sorted(row)}")
        return _prompt_from_value(row[column], column)
    present = [c for c in ACCEPTED_COLUMNS if c in row]
    if not present:
        raise DataError(
            f"no recognised prompt column; columns found: {sorted(row)}; accepted: messages, prompt, "
            "chosen/text/transcript (HH-RLHF transcript), or pass column="
        )
    name = next((c for c in present if row[c] is not None), present[0])
    if name == "messages" and not isinstance(row[name], list):
        raise _type_error(name, "a list of {role, content} messages", row[name])
    return _prompt_from_value(row[name], name, transcript=name in TRANSCRIPT_COLUMNS)


def parse_hh_transcript(text: str) -> list[dict[str, str]]:
    """Split an Anthropic HH-RLHF transcript into chat messages.

    A turn starts at ``Human:`` or ``Assistant:`` at the start of the text or after a blank line; a
    marker anywhere else is part of the turn's text. A trailing empty ``Assistant:`` is the cue for the
    model to answer, not a turn, so it is dropped.
    """
    parts = _HH_TURN.split(text)
    if "Human" not in parts[1::2]:
        raise DataError(f"no 'Human:' turn in transcript: {text[:60]!r}")
    if parts[0].strip():
        raise DataError(f"text before the first turn marker: {parts[0][:60]!r}")
    turns = [
        {"role": _HH_ROLES[role], "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if turns[-1] == {"role": "assistant", "content": ""}:
        turns.pop()
    return turns


def dataset_fingerprint(source: str, *, split: str = "train") -> str:
    """Return a sha256 hex digest that changes when the data changes, for stage manifests.

    Local data is hashed byte for byte (a directory: every file with its relative path, in sorted
    order), so an edit is noticed even when the name stays. Hub datasets and scripts use the
    fingerprint ``datasets`` gives the loaded split, which follows the hub revision.
    """
    path = _local_path(source)
    digest = hashlib.sha256()
    if path is None or path.suffix == ".py":
        ds = load_records(source, split=split)
        digest.update(f"hub\0{source}\0{split}\0{ds._fingerprint}".encode())
        return digest.hexdigest()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file of objects; blank lines are skipped, and line numbers count from 1."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {n}: invalid JSON: {err}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def _local_path(source: str) -> Path | None:
    """Return the local path `source` names, or None for a hub id; a missing local file is an error.

    A source that exists, starts like a path or has a file extension is local ("data/red.jsonl");
    anything else ("Anthropic/hh-rlhf") is a hub id.
    """
    path = Path(os.path.expanduser(source))
    if path.exists():
        return path
    if source.startswith(("/", ".", "~")) or path.suffix:
        raise DataError(f"{source}: file does not exist")
    return None


def _prompt_from_value(value: Any, field: str, *, transcript: bool = False) -> str:
    if isinstance(value, list):
        return _first_user_content(value, field)
    if not isinstance(value, str):
        raise _type_error(field, "a string or a list of messages", value)
    if not (transcript or _HH_START.match(value)):
        return check_text(value, field)
    try:
        turns = parse_hh_transcript(value)
    except DataError as err:
        hint = "" if _HH_START.match(value) else " (pass column= to read it as a plain prompt)"
        raise DataError(f"field {field!r}: {err}{hint}") from None
    first = next(t for t in turns if t["role"] == "user")
    return check_text(first["content"], f"{field} (first Human turn)")


def _first_user_content(messages: list[Any], field: str) -> str:
    for j, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _type_error(f"{field}[{j}]", "a {role, content} dict", message)
        if message.get("role") == "user":
            return check_text(message.get("content"), f"{field}[{j}].content")
    roles = [m.get("role") for m in messages]
    raise DataError(f"field {field!r} has no user message (roles: {roles})")


def check_text(value: Any, field: str) -> str:
    """The text of a prompt or reply, stripped; not a string, empty, or holding a control character (NUL, BEL,
    ...) is a :class:`DataError` naming ``field`` (callers reading rows add the file and row number)."""
    if not isinstance(value, str):
        raise _type_error(field, "a string", value)
    if not value.strip():
        raise DataError(f"field {field!r} is empty")
    if bad := _CONTROL.search(value):
        raise DataError(
            f"field {field!r} contains the control character U+{ord(bad.group()):04X} at character {bad.start() + 1}; "
            "prompts and replies are text (a NUL usually means a binary file or a broken export)"
        )
    return value.strip()


def _type_error(field: str, expected: str, value: Any) -> DataError:
    got = "null/missing" if value is None else type(value).__name__
    return DataError(f"field {field!r} must be {expected}, got {got}")


def limit_prompt_length(
    prompts: list[str], tokenizer: Any, max_tokens: int | None, rule: str, where: str
) -> tuple[list[str], dict[str, int]]:
    """Apply a prompt-length limit: overlong prompts are truncated to ``max_tokens`` or dropped (``rule``).

    Why a rule rather than an error: real prompt sets have a long tail, and one 20k-token prompt should not
    stop a run, nor silently blow up a batch. Returns the prompts and the counts the stage puts in its
    metrics. ``where`` (the config field, e.g. ``critique_revise.red_team_prompts``) names the source if
    nothing is left.
    """
    counts = {"prompts_overlong": 0, "prompts_truncated": 0, "prompts_dropped": 0}
    if max_tokens is None:
        return list(prompts), counts
    kept = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        if len(ids) <= max_tokens:
            kept.append(prompt)
            continue
        counts["prompts_overlong"] += 1
        if rule == "drop":
            counts["prompts_dropped"] += 1
        else:
            kept.append(tokenizer.decode(ids[:max_tokens], skip_special_tokens=True).strip())
            counts["prompts_truncated"] += 1
    if prompts and not kept:
        raise DataError(f"{where}: every prompt is longer than max_prompt_tokens={max_tokens} and was dropped")
    return kept, counts
