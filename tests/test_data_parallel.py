"""Data-parallel generation for real: two processes under ``accelerate launch`` (gloo on CPU) against one.

The launch that works on a CPU-only machine with accelerate 1.15 is
``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2``: ``--cpu --num_processes 2``
goes through the simple launcher, which starts one process unless mpirun is configured.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from helpers.servers import free_port

from align.tiny.model import build_model, build_tokenizer

HELPER = Path(__file__).parent / "helpers" / "dp_generate.py"
ROOT = Path(__file__).parent.parent
N = 13  # odd, so the two shards differ in size


def run(cmd: list[str], out: Path) -> dict:
    """The replies of one launch. A launch whose only failure is gloo's abort at exit ("terminate called without
    an active exception", after every process left the group: align.distributed.end_processes) is run once
    more: this test checks what the processes generate; exiting cleanly is the next two tests' subject. A fresh
    clone's test run saw that abort here once (rank 1, after the work was done)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0 and "terminate called without an active exception" in result.stderr:
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_two_processes_return_exactly_the_one_process_replies_in_order(tmp_path):
    torch.manual_seed(0)
    tok = build_tokenizer(["How do I fix bike number 12??? please please", "Sure. First look."], 300)
    model = build_model(tok, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
    with torch.no_grad():  # wider than the default init, so greedy replies differ from prompt to prompt
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.3)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")

    args = [str(HELPER), str(tmp_path / "tiny")]
    one = run([sys.executable, *args, str(tmp_path / "one.json"), str(N)], tmp_path / "one.json")
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    two = run([*launch, *args, str(tmp_path / "two.json"), str(N)], tmp_path / "two.json")

    assert one["num_processes"] == 1 and two["num_processes"] == 2
    assert two["prompts"] == one["prompts"]
    # greedy replies: the same list, in the same order (none lost, none duplicated)
    assert two["replies"] == one["replies"] and len(two["replies"]) == N
    assert len(set(one["replies"])) > 1
    # every prompt answered exactly once, in order; process 0 took the first 6, process 1 the last 7
    assert [s.rsplit("|", 1)[0] for s in two["signed"]] == two["prompts"]
    assert [s.rsplit("|", 1)[1] for s in two["signed"]] == ["0"] * 6 + ["1"] * 7
    # counters are totals over both processes
    assert two["samples_generated"] == N and two["signing_samples"] == N
    assert two["tokens_generated"] == one["tokens_generated"]


def launch_two(*args: str) -> subprocess.CompletedProcess:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(ROOT)}
    env.pop("TQDM_DISABLE", None)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_two_processes_share_one_lock_and_every_run_exits_cleanly(tmp_path):
    """Three launches in a row on one run directory: all processes run under process 0's lock, the lock is
    gone after each run, and every run exits 0 (no abort at exit: the process group is torn down first)."""
    root = tmp_path / "run"
    for attempt in range(3):
        result = launch_two(str(Path(__file__).parent / "helpers" / "dp_run.py"), str(root))
        assert result.returncode == 0 and "terminate called" not in result.stderr, (attempt, result.stderr[-3000:])
        seen = json.loads((root / "gather" / "seen.json").read_text())
        assert len(set(seen["pids"])) == 2 and seen["lock_pid"] == seen["pids"][0]
        assert not (root / ".lock").exists()


def test_the_generation_benchmark_worker_exits_cleanly_run_after_run(tmp_path):
    """scripts/bench_generation.py's data-parallel worker, three times: each must exit 0 and write its totals
    (it once died with "terminate called without an active exception" after finishing its work)."""
    from helpers.tiny_lm import save_tiny_lm

    save_tiny_lm(tmp_path / "tiny", ["How do I fix a bike? please", "Sure. First look."])
    for attempt in range(3):
        out = tmp_path / f"dp-{attempt}.json"
        args = ["--worker", "--config", "recipes/configs/cai_smoke.yaml", "--prompts", "8", "--repeats", "1"]
        result = launch_two(
            str(ROOT / "scripts" / "bench_generation.py"), *args, "--model", str(tmp_path / "tiny"), "--out", str(out)
        )
        assert result.returncode == 0 and "terminate called" not in result.stderr, (attempt, result.stderr[-3000:])
        assert json.loads(out.read_text())["texts"] == 8 * 3
