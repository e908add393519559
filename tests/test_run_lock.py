"""One run per run directory: a second run is refused with the holder named; a dead holder's lock is taken over.

Two recipes on one run directory used to race each other into ``copytree`` / "Directory not empty" tracebacks.
The holder here is a real process holding a real :class:`align.pipeline.Run`; the second is the real recipe.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from align.pipeline import LOCK, Run, RunLocked

ROOT = Path(__file__).resolve().parent.parent
HOLD = """
import sys, time
from align.pipeline import Run
Run(sys.argv[1], order=["a"])
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """A process that holds the lock of ``tmp_path/runs/cai-smoke`` until killed."""
    run_dir = tmp_path / "runs" / "cai-smoke"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "held", process.stderr.read()
    yield process, run_dir
    process.kill()
    process.wait()


def test_a_second_run_is_refused_naming_the_holder_and_takes_over_once_it_is_gone(holder, capsys):
    process, run_dir = holder
    with pytest.raises(RunLocked) as refused:
        Run(run_dir, order=["a"])
    assert f"pid {process.pid}" in str(refused.value) and str(run_dir / LOCK) in str(refused.value)

    process.send_signal(signal.SIGKILL)  # a killed run leaves its lock behind
    process.wait()
    assert (run_dir / LOCK).exists()
    run = Run(run_dir, order=["a"])
    assert f"taking over the lock of pid {process.pid}" in capsys.readouterr().out
    assert json.loads((run_dir / LOCK).read_text())["pid"] == os.getpid()
    run.lock.release()
    assert not (run_dir / LOCK).exists()


def test_a_reused_pid_does_not_keep_a_lock_alive(tmp_path):
    """The lock names a live pid, but a process started at another time: the holder is gone, the pid reused."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = {"pid": os.getppid(), "host": os.uname().nodename, "process_start": 1, "started_at": "earlier"}
    (run_dir / LOCK).write_text(json.dumps(lock))
    run = Run(run_dir, order=["a"])
    assert json.loads((run_dir / LOCK).read_text())["pid"] == os.getpid()
    run.lock.release()


def test_a_lock_being_written_is_respected_until_it_is_old(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK).write_text('{"pid": 12')  # half-written: another run is starting right now
    with pytest.raises(RunLocked, match="another run is starting"):
        Run(run_dir, order=["a"])
    old = time.time() - 60
    os.utime(run_dir / LOCK, (old, old))  # half-written a minute ago: its writer was killed
    Run(run_dir, order=["a"]).lock.release()


def test_the_recipe_on_a_run_directory_in_use_exits_2_with_nothing_touched(holder, tmp_path):
    process, run_dir = holder
    env = {**os.environ, "ALIGN_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}
    config = ROOT / "recipes" / "configs" / "cai_smoke.yaml"
    result = subprocess.run(
        [sys.executable, "recipes/cai.py", "--config", str(config), f"--output_dir={tmp_path / 'runs'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"in use by another run (pid {process.pid}" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK]  # no stage, no snapshot, no log of its own
    assert json.loads((run_dir / LOCK).read_text())["pid"] == process.pid
