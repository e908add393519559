"""Semantic versions of constitutions: the next version at a level, and the level between two.

What each level promises, and which changes need which, is decided in :mod:`align.constitution.diff`;
this module only does the arithmetic on MAJOR.MINOR.PATCH.
"""

from __future__ import annotations

from typing import Literal

from align.constitution.model import _SEMVER_RE, ConstitutionError

__all__ = ["BUMP_LEVELS", "Level", "bump_version", "version_change"]

Level = Literal["none", "patch", "minor", "major"]
BUMP_LEVELS: tuple[Level, ...] = ("none", "patch", "minor", "major")


def _rank(level: str) -> int:
    return BUMP_LEVELS.index(level)  # type: ignore[arg-type]


def _core(version: str) -> tuple[int, int, int]:
    m = _SEMVER_RE.fullmatch(version)
    if m is None:
        raise ConstitutionError(f"{version!r} is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.0.0)")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def bump_version(version: str, level: Level) -> str:
    """The next version at ``level``; pre-release and build parts are dropped, as a release ends them."""
    major, minor, patch = _core(version)
    if level == "major":
        return f"{major + 1}.0.0"
    if level == "minor":
        return f"{major}.{minor + 1}.0"
    if level == "patch":
        return f"{major}.{minor}.{patch + 1}"
    return version


def version_change(old: str, new: str) -> str:
    """The bump level from ``old`` to ``new``, or ``"downgrade"``.

    Only MAJOR.MINOR.PATCH counts: pre-release and build parts do not make a bump, so 1.1.0-rc.1 to
    1.1.0-rc.2 is "none". That is strict on purpose, constitutions are rarely pre-released.
    """
    a, b = _core(old), _core(new)
    if b < a:
        return "downgrade"
    if b[0] != a[0]:
        return "major"
    if b[1] != a[1]:
        return "minor"
    if b[2] != a[2]:
        return "patch"
    return "none"
