"""The one atomic writer: permissions follow the umask, an unchanged file is left alone, failures name the file."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from helpers.mounts import needs_mount_namespace, run_mounted

from align.cli import main as align_cli
from align.data import write_jsonl_atomic, write_text_atomic
from align.pipeline import write_json_atomic

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "constitutions"


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_writer_creates_files_with_the_umask_permissions(tmp_path, umask_022, capsys):
    """Run directories are shared: a new file is 0644 under umask 022 whichever writer made it (was 0600 for
    the constitution CLI, whose writer used mkstemp), and a replaced file keeps the mode it had."""
    write_jsonl_atomic(tmp_path / "rows.jsonl", [{"a": 1}])
    write_json_atomic(tmp_path / "manifest.json", {"a": 1})
    write_text_atomic(tmp_path / "table.md", "| a |\n")
    imported = tmp_path / "paper.yaml"
    assert (
        align_cli(
            ["constitution", "import", str(FIXTURES / "anthropic.json"), "--from", "anthropic", "-o", str(imported)]
        )
        == 0
    )
    exported = tmp_path / "swarm.json"
    assert align_cli(["constitution", "export", str(imported), "--to", "llm-swarm", "-o", str(exported)]) == 0
    for name in ("rows.jsonl", "manifest.json", "table.md", "paper.yaml", "swarm.json"):
        assert mode(tmp_path / name) == 0o644, name

    os.chmod(imported, 0o600)  # someone's private constitution stays private after a bump
    assert align_cli(["constitution", "bump", str(imported), "--patch", "-m", "typo"]) == 0
    assert mode(imported) == 0o600 and "1.0.1" in imported.read_text()
    capsys.readouterr()


def test_an_unchanged_file_is_not_rewritten(tmp_path):
    path = tmp_path / "constitution.json"
    assert write_json_atomic(path, {"a": 1}) is True
    before = path.stat().st_mtime_ns, path.stat().st_ino
    assert write_json_atomic(path, {"a": 1}) is False
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == before
    assert write_json_atomic(path, {"a": 2}) is True and json.loads(path.read_text()) == {"a": 2}


WRITE = """
import sys
from align.data import WriteError, write_jsonl_atomic
try:
    write_jsonl_atomic(sys.argv[1], [{"a": 2}])
except WriteError as err:
    print(err)
"""


@needs_mount_namespace
def test_a_write_to_a_read_only_filesystem_names_the_file_and_leaves_it_alone(tmp_path):
    """On a real read-only mount the rename fails, and so does removing the temp file: the error shown is the
    first one, naming the file (it was hidden behind the temp file's own EROFS)."""
    target = tmp_path / "ro" / "out.jsonl"
    write_jsonl_atomic(target, [{"a": 1}])
    result = run_mounted(
        [sys.executable, "-c", WRITE, target], read_only=[target.parent], capture_output=True, text=True
    )
    assert result.stdout == f"{target}: cannot write: Read-only file system; the file was left as it was\n", (
        result.stderr
    )
    assert target.read_text() == '{"a": 1}\n' and [p.name for p in target.parent.iterdir()] == ["out.jsonl"]
