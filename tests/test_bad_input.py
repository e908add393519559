"""Bad input, one test per kind: a clear message naming the file or field, exit code 2, nothing half-written.

The recipe runs for real in a subprocess (a 2-step base model, shared through the model cache, keeps it
quick). Each test checks the message, that no traceback is shown, that no stage is left half-published,
and where a stage had already started, that what it keeps is only what a re-run resumes from.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from align.data import WriteError, write_jsonl_atomic
from align.sources import Prompt, limit_length
from align.tiny.model import build_model, build_tokenizer
from align.train.common import checkpoint_problem

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "cai.py"
SMOKE = ROOT / "recipes" / "configs" / "cai_smoke.yaml"
QUICK = ["--sft.max_steps=2", "--sft.save_steps=0", "--world.n_phrasings=2"]

pytestmark = pytest.mark.recipe


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad-input-cache")  # the 2-step base model is trained once, then copied


def run(tmp: Path, cache: Path, *args: str, config: Path = SMOKE, prelude: str = "") -> subprocess.CompletedProcess:
    """The recipe in a subprocess; ``prelude`` is Python run first in the same process (to simulate a full disk)."""
    env = {**os.environ, "ALIGN_CACHE": str(cache), "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}
    argv = ["--config", str(config), f"--output_dir={tmp / 'runs'}", *QUICK, *args]
    launch = f"import runpy, sys\nsys.argv = {[str(RECIPE), *argv]!r}\nrunpy.run_path(sys.argv[0], run_name='__main__')"
    code = f"{prelude}\n{launch}"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def assert_clean_failure(result: subprocess.CompletedProcess, tmp: Path, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    for needle in needles:
        assert needle in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    runs = tmp / "runs" / "cai-smoke"
    if runs.exists():  # published stages are whole; a dead stage keeps at most its resumable state
        for partial in runs.glob("*.partial"):
            assert {p.name for p in partial.iterdir()} <= {"shards", "checkpoints", ".input_hash"}, partial
        for stage in runs.iterdir():
            if stage.is_dir() and not stage.name.endswith(".partial") and stage.name not in ("report", "logs"):
                assert (stage / "manifest.json").exists(), stage


def test_malformed_yaml(tmp_path, cache):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text().replace("sft:\n  learning_rate", "sft:\n  learning_rate: [1,\n  lr"))
    result = run(tmp_path, cache, config=bad)
    assert_clean_failure(result, tmp_path, f"{bad}:", "invalid YAML")
    assert not (tmp_path / "runs").exists()


def test_constitution_error_names_file_and_field(tmp_path, cache):
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        textwrap.dedent(
            """\
            name: broken
            version: 1.0.0
            description: a principle without a critique
            principles:
              - id: harm
                revision: Rewrite it.
            """
        )
    )
    result = run(tmp_path, cache, f"--constitution={broken}")
    assert_clean_failure(result, tmp_path, "broken.yaml", "critique")
    assert not (tmp_path / "runs").exists()


def test_prompt_file_missing_required_column(tmp_path, cache):
    prompts = tmp_path / "red.jsonl"
    prompts.write_text('{"question": "How do I pick a lock?"}\n{"question": "How do I hotwire a car?"}\n')
    result = run(tmp_path, cache, f"--critique_revise.red_team_prompts={prompts}", "--until=critique_revise")
    assert_clean_failure(result, tmp_path, "red.jsonl: row 1", "no recognised prompt column", "['question']")
    assert not (tmp_path / "runs" / "cai-smoke" / "critique_revise").exists()


def test_prompt_folder_of_garbage(tmp_path, cache):
    folder = tmp_path / "red"
    folder.mkdir()
    (folder / "part-0.jsonl").write_bytes(bytes(range(256)) * 8)  # not text at all
    result = run(tmp_path, cache, f"--critique_revise.red_team_prompts={folder}", "--until=critique_revise")
    assert_clean_failure(result, tmp_path, f"{folder}/part-0.jsonl: cannot read as json")


def test_nul_inside_a_prompt(tmp_path, cache):
    prompts = tmp_path / "red.jsonl"
    prompts.write_text('{"prompt": "How do I pick a lock?"}\n{"prompt": "How do I\\u0000 hotwire a car?"}\n')
    result = run(tmp_path, cache, f"--critique_revise.red_team_prompts={prompts}", "--until=critique_revise")
    assert_clean_failure(result, tmp_path, "red.jsonl: row 2: field 'prompt' contains the control character U+0000")


def test_prompt_missing_in_one_row(tmp_path, cache):
    prompts = tmp_path / "red.jsonl"
    prompts.write_text('{"prompt": "How do I pick a lock?"}\n{"question": "How do I hotwire a car?"}\n')
    result = run(tmp_path, cache, f"--critique_revise.red_team_prompts={prompts}", "--until=critique_revise")
    assert_clean_failure(result, tmp_path, "red.jsonl: row 2: field 'prompt'", "got null/missing")


def test_empty_prompt(tmp_path, cache):
    prompts = tmp_path / "red.jsonl"
    prompts.write_text('{"prompt": "How do I pick a lock?"}\n{"prompt": "   "}\n')
    result = run(tmp_path, cache, f"--critique_revise.red_team_prompts={prompts}", "--until=critique_revise")
    assert_clean_failure(result, tmp_path, "red.jsonl: row 2", "field 'prompt' is empty")


def test_overlong_prompts_are_dropped_and_counted(tmp_path, cache):
    prompts = tmp_path / "red.jsonl"
    long = "How do I pick a lock " + "and a door " * 40 + "?"
    rows = [{"prompt": "How do I pick a lock?"}, {"prompt": long}, {"prompt": "How do I hotwire a car?"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run(
        tmp_path,
        cache,
        f"--critique_revise.red_team_prompts={prompts}",
        "--critique_revise.prompt_limits.max_prompt_tokens=32",
        "--critique_revise.prompt_limits.overlong=drop",
        "--until=critique_revise",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stage = tmp_path / "runs" / "cai-smoke" / "critique_revise"
    metrics = json.loads((stage / "manifest.json").read_text())["metrics"]
    assert metrics["prompts_overlong"] == metrics["prompts_dropped"] == 1 and metrics["red_team"] == 2
    samples = [json.loads(line) for line in (stage / "samples.jsonl").open()]
    assert [s["prompt"] for s in samples if s["kind"] == "red_team"] == [rows[0]["prompt"], rows[2]["prompt"]]


def test_overlong_rule_truncate_and_drop():
    """Length counts the prompt as the chat template renders it (~20 tokens of markup with this small tokenizer)."""
    tok = build_tokenizer(["pick a lock", "how do I pick a lock and a door"] * 5, 300)
    short, long = Prompt(({"role": "user", "content": "pick a lock"},)), "how do I pick a lock " + "and a door " * 20
    long = Prompt(({"role": "user", "content": long},))

    def rendered_length(prompt):
        text = tok.apply_chat_template(list(prompt.messages), tokenize=False, add_generation_prompt=True)
        return len(tok(text, add_special_tokens=False).input_ids)

    assert rendered_length(short) <= 32 < rendered_length(long)
    kept, counts = limit_length([short, long], tok, 32, "truncate", "x.prompts")
    assert counts == {"prompts_overlong": 1, "prompts_truncated": 1, "prompts_dropped": 0}
    assert kept[0] == short and rendered_length(kept[1]) <= 32 and kept[1].text.startswith("how do I pick")
    kept, counts = limit_length([short, long], tok, 32, "drop", "x.prompts")
    assert kept == [short] and counts["prompts_dropped"] == 1
    with pytest.raises(ValueError, match=r"x.prompts: every prompt is longer than max_prompt_tokens=2"):
        limit_length([long], tok, 2, "drop", "x.prompts")


def test_model_path_that_does_not_exist(tmp_path, cache):
    result = run(tmp_path, cache, "--critique_revise.feedback_model=/nonexistent/feedback-model")
    assert_clean_failure(
        result, tmp_path, "critique_revise.feedback_model: model path /nonexistent/feedback-model does not exist"
    )
    assert not (tmp_path / "runs").exists()  # checked before any stage ran


def test_tokenizer_without_chat_template(tmp_path, cache):
    tok = build_tokenizer(["hello there", "general kenobi"], 100)
    model = build_model(tok, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32)
    tok.chat_template = None
    path = tmp_path / "plain-lm"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    result = run(tmp_path, cache, f"--preferences.feedback_model={path}")
    assert_clean_failure(result, tmp_path, f"preferences.feedback_model: the tokenizer of {path} has no chat template")
    assert not (tmp_path / "runs").exists()


def test_nan_loss_stops_the_stage_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path, cache):
    # A learning rate of 1e30 makes the first update explode: step 2's loss is infinite.
    args = ["--sft_cai.learning_rate=1e30", "--sft_cai.warmup_ratio=0", "--sft_cai.save_steps=1", "--until=sft_cai"]
    result = run(tmp_path, cache, *args)
    assert_clean_failure(result, tmp_path, "sft_cai: loss is NaN or infinite at step 2", "checkpoint-1")
    partial = tmp_path / "runs" / "cai-smoke" / "sft_cai.partial"
    assert not (tmp_path / "runs" / "cai-smoke" / "sft_cai").exists()
    checkpoints = sorted(p.name for p in (partial / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-1"] and checkpoint_problem(partial / "checkpoints" / "checkpoint-1") is None


FULL_DISK = """
import errno, os
_replace = os.replace
def replace(src, dst, *args, **kwargs):
    if str(dst).endswith("critique_revise.partial/shards/00001.jsonl"):
        raise OSError(errno.ENOSPC, "No space left on device")
    return _replace(src, dst, *args, **kwargs)
os.replace = replace
"""


def test_disk_full_names_the_file_and_the_rerun_resumes(tmp_path, cache):
    result = run(tmp_path, cache, "--until=critique_revise", prelude=FULL_DISK)
    shard = tmp_path / "runs" / "cai-smoke" / "critique_revise.partial" / "shards" / "00001.jsonl"
    assert_clean_failure(result, tmp_path, f"{shard}: cannot write: No space left on device (disk full)")
    shards = shard.parent
    assert sorted(p.name for p in shards.iterdir()) == ["00000.jsonl"]  # no temp file, no half-written shard
    assert not (tmp_path / "runs" / "cai-smoke" / "critique_revise").exists()
    again = run(tmp_path, cache, "--until=critique_revise")  # space freed: the same command finishes the stage
    assert again.returncode == 0, again.stderr[-3000:]
    assert "critique_revise: 1 of 3 shards already done" in again.stdout
    # the counts agree with that: the 16 samples of the finished shard were made by the attempt that failed
    assert "critique_revise: reused 0 samples, regenerated 48 (16 of them by an earlier attempt)" in again.stdout
    samples = (tmp_path / "runs" / "cai-smoke" / "critique_revise" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 48 and len({json.loads(s)["id"] for s in samples}) == 48


def test_write_error_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "out.jsonl"
    write_jsonl_atomic(target, [{"a": 1}])

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError, match=rf"{target}: cannot write: No space left on device \(disk full\)"):
        write_jsonl_atomic(target, [{"a": 2}, {"b": 3}])
    assert target.read_text() == '{"a": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_two_runs_on_one_run_directory(tmp_path, cache):
    """A second run on a run directory in use stops at once (exit 2, naming the holder) and leaves the first
    one's files alone; once the holder is gone (killed), the next run takes the stale lock over and finishes."""
    import signal
    import socket
    import time

    argv = ["--config", str(SMOKE), f"--output_dir={tmp_path / 'runs'}", *QUICK, "--until=critique_revise"]
    env = {**os.environ, "ALIGN_CACHE": str(cache), "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}
    first = subprocess.Popen([sys.executable, str(RECIPE), *argv], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    lock = tmp_path / "runs" / "cai-smoke" / ".lock"
    deadline = time.time() + 600
    while first.poll() is None and time.time() < deadline:
        if lock.exists() and f'"pid": {first.pid},' in lock.read_text():
            break
        time.sleep(0.1)
    os.kill(first.pid, signal.SIGSTOP)  # holds the lock, alive, for as long as the second run takes
    try:
        second = run(tmp_path, cache, "--until=sft")
        assert_clean_failure(
            second,
            tmp_path,
            f"{lock.parent}: in use by another run (pid {first.pid} on {socket.gethostname()}, started ",
            f"if it is gone, delete {lock}",
        )
    finally:
        first.kill()  # SIGKILL: the lock stays behind, stale
        first.wait()
    assert lock.exists()
    third = run(tmp_path, cache, "--until=sft")
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"{lock}: taking over the lock of pid {first.pid}, which is gone" in third.stdout
    assert not lock.exists()  # released at exit
