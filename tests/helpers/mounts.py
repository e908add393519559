"""Real full disks and read-only filesystems for tests, without root: a command in its own mount namespace.

``unshare --mount --map-root-user`` gives the command a private mount table in which it may mount a small
tmpfs (it fills up for real: ENOSPC from the kernel) or bind a directory read-only over itself (EROFS). The
mounts vanish with the command; the rest of the machine never sees them. Tests skip where user namespaces
are not allowed.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest


def _available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--map-root-user", "true"], capture_output=True)
    return probe.returncode == 0


AVAILABLE = _available()
needs_mount_namespace = pytest.mark.skipif(not AVAILABLE, reason="user and mount namespaces are not available")


def run_mounted(
    argv: Sequence[str],
    *,
    tmpfs: dict[Path, str] | None = None,
    read_only: Sequence[Path] = (),
    **kwargs,
) -> subprocess.CompletedProcess:
    """Run ``argv`` with a tmpfs of the given size (e.g. ``"400k"``) at each ``tmpfs`` path and each
    ``read_only`` directory bound read-only over itself; ``kwargs`` go to ``subprocess.run``."""
    steps = []
    for path, size in (tmpfs or {}).items():
        steps.append(f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(path))}")
    for path in read_only:
        quoted = shlex.quote(str(path))
        steps.append(f"mount --bind {quoted} {quoted} && mount -o remount,bind,ro {quoted}")
    script = " && ".join([*steps, "exec " + shlex.join(map(str, argv))])
    return subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script], **kwargs)
