"""Deterministic fault injection: kill the process at a chosen write, so crash recovery can be tested.

Random-delay kills are flaky on a loaded machine and rarely hit the interesting moments. Instead every
durable write that recovery depends on (a generation shard, a training checkpoint) is a numbered *fault
point*, and ``ALIGN_FAULT_AFTER=<stage>:<n>`` makes the process SIGKILL itself right after the n-th such
write of that stage. The fault-injection tests pick ``n`` at seeded random; nothing happens when the
variable is unset, which is always the case outside tests.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

ENV = "ALIGN_FAULT_AFTER"
LOG_ENV = "ALIGN_FAULT_LOG"  # a file that gets one line per fault point passed: how tests learn the points
_counts: Counter[str] = Counter()


def stage_of(path: str | os.PathLike) -> str:
    """The pipeline stage a path belongs to: the ``<stage>.partial`` (or ``<stage>``) directory above it."""
    for part in reversed(Path(path).resolve().parts):
        if part.endswith(".partial"):
            return part[: -len(".partial")]
    return Path(path).name


def fault_point(stage: str) -> None:
    """Count one durable write of ``stage``; SIGKILL this process if ``ALIGN_FAULT_AFTER`` says so."""
    log = os.environ.get(LOG_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(stage + "\n")
    spec = os.environ.get(ENV)
    if not spec:
        return
    _counts[stage] += 1
    target, _, n = spec.rpartition(":")
    if target == stage and n.isdigit() and _counts[stage] == int(n):
        print(f"[align] fault injection: SIGKILL after write {n} of {stage}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
