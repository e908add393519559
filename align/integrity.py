"""Cheap structural checks that a file was written whole, for files whose writer is not atomic.

No tensor is loaded: a safetensors file must be exactly as long as its header says, a torch-saved file must
have the zip directory torch writes at its end, and a JSON(L) file must parse. Used to tell a finished
training checkpoint from one killed mid-save, and to verify a stage's outputs before it is published.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path


def safetensors_problem(path: Path) -> str | None:
    """A safetensors file is whole iff its size is 8 + header + the end of the last tensor the header names."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{path.name} unreadable ({err})"
    size = path.stat().st_size
    return None if size == 8 + n + end else f"{path.name} is truncated ({size} of {8 + n + end} bytes)"


def torch_file_problem(path: Path) -> str | None:
    """torch.save writes a zip whose directory is at the end: a truncated file has none."""
    try:
        with zipfile.ZipFile(path) as z:
            if not z.namelist():
                return f"{path.name} is empty"
    except (OSError, zipfile.BadZipFile) as err:
        return f"{path.name} unreadable ({err})"
    return None


def json_problem(path: Path) -> str | None:
    """A JSON file parses; a JSONL file parses line by line (blank lines allowed)."""
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            for n, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        json.loads(line)
                    except ValueError as err:
                        return f"{path.name}: line {n} is not JSON ({err})"
        else:
            json.loads(text)
    except (OSError, ValueError) as err:
        return f"{path.name} unreadable ({err})"
    return None


CHECKS = {".safetensors": safetensors_problem, ".json": json_problem, ".jsonl": json_problem}


def file_problem(path: Path) -> str | None:
    """What is wrong with ``path`` by the check for its kind, or None (also for kinds with no check)."""
    check = CHECKS.get(path.suffix)
    return check(path) if check else None
