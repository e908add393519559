"""Real servers on loopback for tests: a free port, start a command, wait until a URL answers, stop it."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(command: list[str], ready_url: str, log: Path, env: dict[str, str], timeout: float = 120) -> Iterator[None]:
    """Run ``command`` (output to ``log``) until ``ready_url`` answers 200; stop it on exit. A server that dies or
    never answers fails the test with the tail of its log, not a hang."""
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready_url, timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(
                    f"{Path(command[0]).name} {' '.join(command[1:3])} did not start:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
