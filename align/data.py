"""Prompts in, clean prompt lists out: local files or Hugging Face datasets, in three common formats.

The pipeline only ever needs the user's first turn of each conversation, but prompt sets come as chat
``messages``, as a ``prompt`` column (TRL style) or as Anthropic HH-RLHF transcripts. Everything here
turns them into ``list[str]`` and fails loudly, naming the file, the row and the field, so that a bad
row is found before hours of generation run on it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The writers live in align.files (one atomic-write helper); they are re-exported here for existing callers.
from align.files import WriteError, write_jsonl_atomic, write_text_atomic

__all__ = [
    "DataError",
    "WriteError",
    "check_text",
    "conversation_from_row",
    "dataset_fingerprint",
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


def load_records(
    source: str, *, split: str = "train", name: str | None = None, data_dir: str | None = None
) -> datasets.Dataset:
    """Load raw rows from a local file, a ``save_to_disk`` directory, or a hub id / dataset script.

    A single local file is one split by construction, so `split` only selects among the splits of a
    saved DatasetDict or of a hub dataset; ``name`` (a config / subset) and ``data_dir`` apply to hub
    datasets and folders of data files. Gzipped files (``.jsonl.gz``) read like their plain forms.
    """
    import datasets

    path = _local_path(source)
    if path is None or path.suffix == ".py":
        offline = "; with no network, download it elsewhere and pass a local file or folder"
        hub = lambda: datasets.load_dataset(source, name=name, data_dir=data_dir, split=split)  # noqa: E731
        return _loaded(source, hub, offline)
    if path.is_dir():
        if not ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            return _folder(path, split, data_dir)
        saved = _loaded(source, lambda: datasets.load_from_disk(str(path)))
        if isinstance(saved, datasets.DatasetDict):
            if split not in saved:
                raise DataError(f"{source}: no split {split!r}; splits found: {sorted(saved)}")
            return saved[split]
        return saved
    suffixes = [x.lower() for x in path.suffixes]
    plain = suffixes[-2] if suffixes[-1:] == [".gz"] and len(suffixes) > 1 else suffixes[-1] if suffixes else ""
    builder = FILE_BUILDERS.get(plain)
    if builder is None:
        supported = ", ".join([*FILE_BUILDERS, ".jsonl.gz", ".json.gz", ".csv.gz"])
        raise DataError(f"{source}: unsupported extension {''.join(path.suffixes)!r}; supported: {supported}")
    # keep_default_na=False: a CSV prompt reading "NA" or "null" stays text instead of becoming None.
    kwargs = {"keep_default_na": False} if builder == "csv" else {}
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as err:  # datasets reports an empty file as StopIteration, ValueError, ...
        opener = gzip.open if suffixes[-1:] == [".gz"] else open
        try:
            with opener(path, "rb") as f:
                blank = not f.read(1 << 16).strip()
        except OSError:  # not gzip after all
            blank = False
        if blank or "corresponds to no data" in str(err):
            raise DataError(f"{source}: empty prompt file (no rows)") from err
        raise DataError(f"{source}: cannot read as {builder}: {_reason(err)}") from err


def _loaded(source: str, load: Callable[[], Any], hint: str = "") -> Any:
    """``load()``, with whatever ``datasets`` raises (a folder of garbage, a hub id that cannot be reached, a
    damaged save) turned into a :class:`DataError` naming the source and the underlying reason."""
    try:
        return load()
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{source}: cannot load as a dataset: {_reason(err)}{hint}") from err


def _reason(err: BaseException) -> str:
    """The innermost message of an exception chain, on one line: datasets wraps the parser's own error."""
    inner = err.__cause__ or err.__context__
    while inner is not None and str(inner).strip():
        err, inner = inner, inner.__cause__ or inner.__context__
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _folder(path: Path, split: str, data_dir: str | None = None) -> datasets.Dataset:
    """A folder of data files; if it cannot be read, the error names the first file that cannot."""
    import datasets

    try:
        return datasets.load_dataset(str(path), data_dir=data_dir, split=split)
    except Exception as err:
        for file in sorted(p for p in path.rglob("*") if p.suffix.lower() in FILE_BUILDERS and p.is_file()):
            load_records(str(file))  # raises a DataError naming this file if it is the broken one
        raise DataError(f"{path}: cannot load as a dataset: {_reason(err)}") from err


def load_preference_pairs(
    source: str,
    *,
    split: str = "train",
    limit: int | None = None,
    name: str | None = None,
    data_dir: str | None = None,
    context: str = "first_turn",
) -> list[dict[str, Any]]:
    """Conversational pairs from rows of ``prompt``, ``chosen`` and ``rejected`` (strings or chat messages), or
    of HH-RLHF's ``chosen`` and ``rejected`` transcripts, whose shared turns are the prompt.

    ``context: full`` keeps the whole conversation before the compared answers; ``first_turn`` its first human turn.
    """
    ds = load_records(source, split=split, name=name, data_dir=data_dir)
    hh = "prompt" not in ds.column_names and {"chosen", "rejected"} <= set(ds.column_names)
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in ds.column_names and not hh]
    if missing:
        raise DataError(
            f"{source}: preference pairs need columns prompt, chosen, rejected (or HH-RLHF's chosen and rejected "
            f"transcripts); missing {missing}"
        )
    rows = []
    for i, row in enumerate(ds.select(range(min(limit, len(ds)))) if limit is not None else ds, start=1):
        try:
            if hh:
                prompt, chosen, rejected = _hh_pair(row["chosen"], row["rejected"])
                if context != "full":
                    prompt = prompt[:1] if prompt[0]["role"] == "user" else [_first_user(prompt)]
            else:
                prompt = conversation_from_row(row, column="prompt", context=context)
                chosen, rejected = (_reply(row[key], key) for key in ("chosen", "rejected"))
        except DataError as err:
            raise DataError(f"{source}: row {i}: {err}") from None
        rows.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    return rows


def _hh_pair(chosen: Any, rejected: Any) -> tuple[list[dict[str, str]], str, str]:
    """(shared conversation, chosen answer, rejected answer) of an HH-RLHF pair of transcripts."""
    turns = []
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str):
            raise _type_error(field, "an HH-RLHF transcript string", value)
        try:
            turns.append(parse_hh_transcript(value))
        except DataError as err:
            raise DataError(f"field {field!r}: {err}") from None
    (*context_c, last_c), (*context_r, last_r) = turns
    if last_c["role"] != "assistant" or last_r["role"] != "assistant" or context_c != context_r or not context_c:
        raise DataError("chosen and rejected transcripts must share their turns up to a final assistant answer")
    return context_c, check_text(last_c["content"], "chosen"), check_text(last_r["content"], "rejected")


def _first_user(messages: list[dict[str, str]]) -> dict[str, str]:
    return next(m for m in messages if m["role"] == "user")


def _reply(value: Any, field: str) -> str:
    """The assistant's answer: a string, or the last assistant turn of a message list."""
    if isinstance(value, list):
        turns = [m for m in value if isinstance(m, dict) and m.get("role") == "assistant"]
        if not turns:
            raise DataError(f"{field}: no assistant message")
        value = turns[-1].get("content")
    return check_text(value, field)


def prompt_from_row(row: dict[str, Any], *, column: str | None = None) -> str:
    """Detect the row's format and return its first user turn, stripped."""
    return conversation_from_row(row, column=column)[-1]["content"]


def prompt_column(row: dict[str, Any], column: str | None = None) -> str:
    """The column a row's prompt is read from: ``column``, or the first of messages, prompt, chosen, text,
    transcript holding a value (so a preference row prompt/chosen/rejected yields its prompt, and a JSONL file
    may mix formats row by row)."""
    if column is not None:
        if column not in row:
            raise DataError(f"field {column!r} not found; columns found: {sorted(row)}")
        return column
    present = [c for c in ACCEPTED_COLUMNS if c in row]
    if not present:
        raise DataError(
            f"no recognised prompt column; columns found: {sorted(row)}; accepted: messages, prompt, "
            "chosen/text/transcript (HH-RLHF transcript), or pass column="
        )
    return next((c for c in present if row[c] is not None), present[0])


def conversation_from_row(
    row: dict[str, Any], *, column: str | None = None, context: str = "first_turn"
) -> list[dict[str, str]]:
    """The conversation a row asks the model to continue, ending with a user turn.

    ``first_turn``: the first user turn alone (what CAI's red-team prompts are). ``full``: every turn up to the
    last user turn, a leading system turn included, so the model answers the conversation's last request (most
    HH-RLHF red-team transcripts are multi-turn). Messages are stripped; an empty one is an error.
    """
    name = prompt_column(row, column)
    value = row[name]
    if name == "messages" and not isinstance(value, list):
        raise _type_error(name, "a list of {role, content} messages", value)
    if isinstance(value, list):
        messages = _messages(value, name)
    elif not isinstance(value, str):
        raise _type_error(name, "a string or a list of messages", value)
    elif (column is None and name in TRANSCRIPT_COLUMNS) or _HH_START.match(value):
        try:
            messages = parse_hh_transcript(value)
        except DataError as err:
            hint = "" if _HH_START.match(value) else " (pass column= to read it as a plain prompt)"
            raise DataError(f"field {name!r}: {err}{hint}") from None
        speaker = {"user": "Human", "assistant": "Assistant"}
        messages = [
            {**m, "content": check_text(m["content"], f"{name} ({speaker[m['role']]} turn {k})")}
            for k, m in enumerate(messages, start=1)
        ]
    else:
        return [{"role": "user", "content": check_text(value, name)}]
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        raise DataError(f"field {name!r} has no user message (roles: {[m['role'] for m in messages]})")
    if context == "full":
        return messages[: users[-1] + 1]
    return [messages[users[0]]]


def _messages(value: list[Any], field: str) -> list[dict[str, str]]:
    out = []
    for j, message in enumerate(value):
        if not isinstance(message, dict):
            raise _type_error(f"{field}[{j}]", "a {role, content} dict", message)
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise DataError(f"field {field}[{j}].role must be system, user or assistant, got {role!r}")
        out.append({"role": role, "content": check_text(message.get("content"), f"{field}[{j}].content")})
    return out


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


def jsonl_rows(lines: Iterable[str], where: str, objects: bool = True) -> Iterator[tuple[int, Any]]:
    """(line number from 1, parsed value) for each non-blank line; errors name ``where:line``. Every JSONL reader
    of the project goes through here, so they all skip blank lines and report bad JSON the same way."""
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}:{n}: invalid JSON: {err.msg}") from None
        if objects and not isinstance(row, dict):
            raise DataError(f"{where}:{n}: expected a JSON object, got {type(row).__name__}")
        yield n, row


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file of objects; blank lines are skipped, and line numbers count from 1."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    with open(path, encoding="utf-8") as f:
        return [row for _, row in jsonl_rows(f, str(path))]


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
