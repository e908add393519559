"""Fault injection: SIGKILL each stage of the smoke recipe at seeded random points, re-run, compare.

For every stage, ``ALIGN_FAULT_AFTER=<stage>:<n>`` kills the recipe (a real subprocess, SIGKILL) right after
its n-th durable write (a generation shard or a training checkpoint), with n drawn at seeded random from the
points an uninterrupted run passes; a training stage is killed only after its first epoch. The same command
is then run again. It must resume (not restart), and the stage's outputs must be complete, without
duplicates, and equal to the uninterrupted run's: generation
files byte for byte (sampled generation included, since each shard has its own seed), training per-step
losses and final weights. One point per stage also damages what the kill left behind the way a kill in the
middle of a write would (a half-written checkpoint, a stray temp file), which must be skipped.

Adding a stage (e.g. PPO) is one line in ``STAGES``; it then needs fault points (``align.faults.fault_point``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "cai.py"
SMOKE = ROOT / "recipes" / "configs" / "cai_smoke.yaml"

# stage -> what it publishes: "generation" (JSONL files, compared byte for byte) or "training" (a model)
STAGES = {
    "sft": "training",
    "critique_revise": "generation",
    "sft_cai": "training",
    "preferences": "generation",
    "reward": "training",
    "dpo": "training",
    "eval": "generation",
}
POINTS_PER_STAGE = 2
# Checkpoint interval of each training stage in the runs below (a fault point per checkpoint).
SAVE_STEPS = {"sft": 6, "sft_cai": 1, "reward": 2, "dpo": 2}
# Every training stage runs past its first epoch (the base model: 36 steps of about 29 per epoch; the others
# two epochs), and every step is logged so loss trajectories can be compared step by step.
OVERRIDES = [
    "--sft.max_steps=36",
    f"--sft.save_steps={SAVE_STEPS['sft']}",
    *(f"--{s}.num_train_epochs=2" for s in ("sft_cai", "reward", "dpo")),
    *(f"--{s}.logging_steps=1" for s in ("sft", "sft_cai", "reward", "dpo")),
]

pytestmark = pytest.mark.recipe


def recipe(run_root: Path, cache: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {
        **os.environ,
        "ALIGN_CACHE": str(cache),
        "WANDB_MODE": "disabled",
        "TQDM_DISABLE": "1",
        **(env or {}),
    }
    for key in ("ALIGN_FAULT_AFTER", "ALIGN_FAULT_LOG"):
        if key not in (env or {}):
            full_env.pop(key, None)
    return subprocess.run(
        [sys.executable, str(RECIPE), "--config", str(SMOKE), f"--output_dir={run_root}", *OVERRIDES, *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """An uninterrupted run (fresh model cache, so the base model really trains), its fault points, a snapshot."""
    tmp = tmp_path_factory.mktemp("faults")
    log = tmp / "points.log"
    result = recipe(tmp / "runs", tmp / "cache", env={"ALIGN_FAULT_LOG": str(log)})
    assert result.returncode == 0, result.stderr[-3000:]
    points = Counter(log.read_text().split())
    snapshot = tmp / "snapshot"
    shutil.copytree(tmp / "runs", snapshot)
    return tmp, points, snapshot


def jsonl_files(stage_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(stage_dir.glob("*.jsonl"))}


def losses(stage_dir: Path) -> dict[int, float]:
    """Step -> logged training loss; a step logged twice (a resume that repeated work) fails here."""
    history = json.loads((stage_dir / "log_history.json").read_text())
    steps = [e["step"] for e in history if "loss" in e]
    assert len(steps) == len(set(steps)), f"steps logged twice: {steps}"
    return {e["step"]: e["loss"] for e in history if "loss" in e}


def weights(stage_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(stage_dir / "model.safetensors")


def damage_leftovers(partial: Path, kind: str) -> str:
    """Make the dead attempt look killed in the middle of a write; returns what the re-run must warn about."""
    if kind == "training":
        newest = max((partial / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        model = newest / "model.safetensors"
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # the Trainer died writing it
        (newest / ".align_complete").unlink()
        return "skipping corrupt or partial checkpoint"
    shards = partial / "shards"
    (shards / ".00000.jsonl.deadbeef.tmp").write_text('{"shard": 0, "items"')  # died before the rename
    return ""


def check_outputs(kind: str, got: Path, want: Path) -> None:
    """Complete, no duplicates, and equal to the uninterrupted run."""
    assert json.loads((got / "manifest.json").read_text())["status"] == "done"
    if kind == "generation":
        files = jsonl_files(got)
        assert files and files == jsonl_files(want)
        for name, data in files.items():
            lines = data.splitlines()
            assert len(lines) == len(set(lines)), f"{name}: duplicate records"
        return
    import torch

    assert losses(got) == pytest.approx(losses(want), rel=1e-5)
    a, b = weights(got), weights(want)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def candidate_points(stage: str, points: int, snapshot: Path) -> list[int]:
    """The fault points to draw from: for a training stage, only checkpoints after its first epoch (where a
    resumed run must restore the data order of a later epoch, which it once did not); any for generation."""
    if STAGES[stage] != "training":
        return list(range(1, points + 1))
    history = json.loads((snapshot / "cai-smoke" / stage / "log_history.json").read_text())
    steps_per_epoch = next(e["step"] / e["epoch"] for e in history if "loss" in e and e.get("epoch"))
    return [n for n in range(1, points + 1) if n * SAVE_STEPS[stage] > steps_per_epoch]


@pytest.mark.parametrize("stage", list(STAGES))
def test_killed_stage_resumes_to_the_uninterrupted_result(baseline, stage):
    tmp, points, snapshot = baseline
    kind = STAGES[stage]
    assert points[stage] >= 2, f"{stage} passes only {points[stage]} fault points in the smoke run"
    candidates = candidate_points(stage, points[stage], snapshot)
    assert candidates, f"{stage} writes no checkpoint after its first epoch"
    rng = random.Random(f"fault-injection:{stage}")
    chosen = sorted(rng.sample(candidates, min(POINTS_PER_STAGE, len(candidates))))
    run_root = tmp / "runs"
    for k, n in enumerate(chosen):
        shutil.rmtree(run_root)
        shutil.copytree(snapshot, run_root)  # same path as the baseline: provenance names match too
        cache = tmp / f"cache-{stage}-{n}"  # empty: a forced sft retrains instead of copying the cached model
        args = ("--force", stage, "--until", stage)
        killed = recipe(run_root, cache, *args, env={"ALIGN_FAULT_AFTER": f"{stage}:{n}"})
        assert killed.returncode == -signal.SIGKILL, (n, killed.returncode, killed.stderr[-2000:])
        partial = run_root / "cai-smoke" / f"{stage}.partial"
        assert partial.is_dir() and not (partial / "manifest.json").exists()
        warning = damage_leftovers(partial, kind) if k == len(chosen) - 1 else ""
        again = recipe(run_root, cache, *args)
        assert again.returncode == 0, (n, again.stderr[-3000:])
        assert f"[align] {stage}: resuming from {partial}" in again.stdout
        if warning:
            assert warning in again.stderr
        assert not partial.exists()
        check_outputs(kind, run_root / "cai-smoke" / stage, snapshot / "cai-smoke" / stage)
