"""Judge a file of existing responses: the library behind ``align eval score``.

Users bring responses from any model as CSV or JSON lines, one (prompt, response) per row. Every row is
checked before any model is loaded, so a bad row fails in a second, naming the file, line and field, and
the output (one row per input row, in order) is only written once every row has its verdict.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align.data import DataError, jsonl_rows
from align.evaluation.judges import Judge, agreement


@dataclass(frozen=True)
class ResponseRows:
    """The columns of a response file that the judges need, with each row's line in the file."""

    source: str
    lines: list[int]
    prompts: list[str]
    responses: list[str]
    references: list[str] | None  # reference labels, when a label column was named


def read_rows(path: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
    """(line, row) for every row of a .csv (header first) or .jsonl file; the line is where the row starts."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    rows: list[tuple[int, dict[str, Any]]] = []
    with open(path, encoding="utf-8", newline="") as f:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise DataError(f"{path}: empty CSV file (no header)")
            start = reader.line_num + 1
            for row in reader:
                if None in row:
                    raise DataError(f"{path}:{start}: more fields than the header's {len(reader.fieldnames)}")
                rows.append((start, dict(row)))
                start = reader.line_num + 1
        elif path.suffix.lower() in (".jsonl", ".json"):
            rows += jsonl_rows(f, str(path))
        else:
            raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .csv or .jsonl")
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def select_columns(
    path: str | os.PathLike,
    *,
    prompt_column: str = "prompt",
    response_column: str = "response",
    label_column: str | None = None,
    labels: Sequence[str] | None = None,
) -> ResponseRows:
    """Read ``path`` and check every row: a non-empty prompt, a string response (empty is allowed: it is judged
    as saying nothing), and, with ``label_column``, a label from ``labels``."""
    prompts, responses, references, lines = [], [], [], []
    for line, row in read_rows(path):
        for column in (prompt_column, response_column, label_column):
            if column is not None and column not in row:
                raise DataError(f"{path}:{line}: field {column!r} not found; fields found: {sorted(row)}")
        prompt, response = row[prompt_column], row[response_column]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{path}:{line}: field {prompt_column!r} must be a non-empty string, got {prompt!r}")
        if not isinstance(response, str):
            raise DataError(f"{path}:{line}: field {response_column!r} must be a string, got {response!r}")
        if label_column is not None:
            label = row[label_column]
            if labels is not None and label not in labels:
                raise DataError(f"{path}:{line}: field {label_column!r} must be one of {list(labels)}, got {label!r}")
            references.append(label)
        lines.append(line)
        prompts.append(prompt)
        responses.append(response)
    return ResponseRows(str(path), lines, prompts, responses, references if label_column is not None else None)


def judge_rows(
    rows: ResponseRows, judge: Judge, *, binary: dict[str, str] | None = None
) -> tuple[list[dict], dict | None]:
    """One output row per input row, in order, and the judge's agreement with the reference labels if any."""
    verdicts = judge.judge(rows.prompts, rows.responses)
    out = []
    for k, (line, prompt, response, verdict) in enumerate(zip(rows.lines, rows.prompts, rows.responses, verdicts)):
        row = {"line": line, "prompt": prompt, "response": response, "judge": judge.name}
        row.update(label=verdict.label, score=verdict.score)
        if rows.references is not None:
            row["reference"] = rows.references[k]
        out.append(row)
    if rows.references is None:
        return out, None
    return out, agreement([v.label for v in verdicts], rows.references, binary=binary)
