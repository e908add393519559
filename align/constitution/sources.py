"""Constitutions from files and git revisions (``path@rev``), and the CI check that compares them."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from align.constitution.diff import ConstitutionDiff, diff_constitutions
from align.constitution.model import (
    SUFFIXES,
    Constitution,
    ConstitutionError,
    load_constitution,
    parse_constitution_text,
)
from align.constitution.render import _advice

__all__ = ["CheckResult", "check_file", "load_at_revision", "read_source", "split_source"]


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
