"""The one way align writes a file: atomically, with the permissions any new file gets, failures named.

Readers (a resumed run, a report, another process) must see either the old file or the whole new one, so
every file is written to a temporary name next to it (same filesystem, so the rename is atomic), flushed
to disk and renamed over the target. A new file gets the permissions ``open`` gives under the umask (not
``mkstemp``'s 0600, which made shared run directories unreadable to the team); a replaced file keeps its
own. A failure (disk full, read-only filesystem, permissions) raises :class:`WriteError` naming the target
and leaves it as it was, with no temporary file behind, and cleaning up never hides the first error.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

HINTS = {
    errno.ENOSPC: " (disk full)",
    errno.EDQUOT: " (disk quota exceeded)",
    errno.EROFS: " (read-only file system)",
    errno.EACCES: " (permission denied)",
}


class WriteError(OSError):
    """An output file could not be written (disk full, read-only, permissions); names the file, left untouched."""

    def __str__(self) -> str:  # the message alone: it already says what failed, "[Errno 28]" adds nothing
        return self.strerror or super().__str__()


def write_error(
    path: str | os.PathLike, err: BaseException, consequence: str = "the file was left as it was"
) -> WriteError:
    """The :class:`WriteError` for ``path`` failing with ``err``, saying what that left behind."""
    code = getattr(err, "errno", None)
    reason = getattr(err, "strerror", None) or str(err)
    hint = HINTS.get(code, "")
    if hint and hint[2:-1] in reason.lower():
        hint = ""
    return WriteError(code, f"{path}: cannot write: {reason}{hint}; {consequence}")


def atomic_write(
    path: str | os.PathLike, write: Callable[[BinaryIO], object], *, unchanged: bytes | None = None
) -> bool:
    """Write ``path`` through ``write(f)`` atomically; False (nothing written) if it already holds ``unchanged``.

    ``unchanged`` lets a re-run that would write the same bytes (a finished run's report, its constitution
    snapshot) leave the file alone, which also lets a finished run be re-run from a read-only copy.
    """
    path = Path(path)
    if unchanged is not None:
        with contextlib.suppress(OSError):
            if path.stat().st_size == len(unchanged) and path.read_bytes() == unchanged:
                return False
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = None
        with contextlib.suppress(OSError):
            mode = path.stat().st_mode & 0o7777
        # os.open with 0o666 honours the umask, unlike mkstemp's 0o600.
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):  # on a read-only filesystem there is nothing to remove, and it says so
            tmp.unlink(missing_ok=True)
        raise write_error(path, err) from err
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return True


def write_text_atomic(path: str | os.PathLike, text: str) -> bool:
    """Write a text file (UTF-8) atomically; an identical existing file is left alone (returns False)."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data), unchanged=data)


def write_json_atomic(path: str | os.PathLike, data: Any) -> bool:
    """Write indented, key-sorted JSON atomically (see :func:`write_text_atomic`)."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write ``rows`` as JSON lines atomically, streaming them; returns how many were written."""
    count = 0

    def write(f: BinaryIO) -> None:
        nonlocal count
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
            count += 1

    atomic_write(path, write)
    return count
