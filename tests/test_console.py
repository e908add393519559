"""The quiet console and the run's log file, in a real subprocess (the console rewires sys.stdout/stderr)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import logging, sys, warnings
from align import console
from align.generation.base import Progress, generation_meter

console.start(sys.argv[1], verbose=sys.argv[2] == "verbose")
print("[align] sft: running (stage 1/7, 1s elapsed)")
print("[INFO] Running in WANDB offline mode")
print("connecting to http://me:hunter22@gpu-box/v1")
logging.getLogger("transformers.modeling_utils").warning("Some weights were not initialized")
warnings.warn_explicit("`foo` is deprecated", FutureWarning, "/site-packages/transformers/x.py", 1)
warnings.warn("checkpoint-4: skipping corrupt or partial checkpoint", UserWarning)
with generation_meter("critique_revise"):
    for call in range(3):  # a response, a critique and a revision: three generate calls, one line
        progress = Progress(4, "generate")
        progress.update(4, 40)
        progress.close()
"""


def run(tmp_path: Path, mode: str = "quiet") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TQDM_DISABLE", None)
    cmd = [sys.executable, "-c", SCRIPT, str(tmp_path / "run"), mode]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_the_console_shows_aligns_lines_and_the_log_gets_everything_redacted(tmp_path):
    result = run(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    assert lines[0] == "[align] sft: running (stage 1/7, 1s elapsed)"
    assert lines[1] == "connecting to http://[redacted]@gpu-box/v1"  # the console is redacted too
    assert any("skipping corrupt or partial checkpoint" in line for line in lines)  # align's own warning
    generated = [line for line in lines if "generated" in line]
    assert len(generated) == 1 and generated[0].startswith("[align] critique_revise: generated 12 samples in ")
    assert generated[0].endswith(" tokens/s)") and " samples/s, " in generated[0]
    for hidden in ("WANDB offline", "Some weights", "deprecated"):
        assert not [line for line in lines if hidden in line], hidden
    (log,) = (tmp_path / "run" / "logs").glob("*.log")
    text = log.read_text()
    for kept in ("[align] sft: running", "WANDB offline", "Some weights were not initialized", "`foo` is deprecated"):
        assert kept in text, kept
    assert "hunter22" not in text and "http://[redacted]@gpu-box/v1" in text


def test_verbose_shows_the_libraries_too(tmp_path):
    result = run(tmp_path, "verbose")
    out = result.stdout + result.stderr
    assert "WANDB offline" in out and "Some weights were not initialized" in out and "`foo` is deprecated" in out


def test_on_a_terminal_the_generation_bar_stays_with_its_rates(tmp_path):
    """On a terminal the meter is a tqdm bar left on screen after it finishes, with samples/s and tok/s."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column terminal
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TQDM_DISABLE", None)
    cmd = [sys.executable, "-c", SCRIPT, str(tmp_path / "run"), "quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=300) == 0
    screen = b"".join(chunks).decode(errors="replace")
    final = screen.split("critique_revise: ")[-1].splitlines()[0]  # the bar's last redraw, kept on screen
    assert final.startswith("12sample [") and "sample/s" in final and "tok_s=" in final, final
    assert "generated 12 samples" not in screen  # the bar, not the summary line
