"""Crash-safety building blocks, in process: sharded generation, checkpoint validity, resumed training."""

from __future__ import annotations

import json
import os
import re
import sys

import pytest
import torch
from datasets import Dataset
from helpers.mounts import needs_mount_namespace, run_mounted

from align.config import SFTStageConfig
from align.shards import run_sharded, shard_seed
from align.tiny.model import build_model, build_tokenizer
from align.train.common import COMPLETE, checkpoint_problem, newest_valid_checkpoint
from align.train.sft import train_sft


def squares(calls):
    def process(items, index):
        calls.append(index)
        return [{"x": x, "y": x * x, "seed": shard_seed(0, index)} for x in items], {"n": len(items)}

    return process


def test_shards_resume_generates_only_missing_ones_in_order(tmp_path):
    calls = []
    first = run_sharded(list(range(10)), tmp_path / "shards", squares(calls), 3)
    assert calls == [0, 1, 2, 3] and [r["x"] for r in first.records] == list(range(10))
    assert first.counts == {"n": 10} and first.shards == 4
    (tmp_path / "shards" / "00002.jsonl").unlink()  # the shard a killed run had not written yet
    calls.clear()
    again = run_sharded(list(range(10)), tmp_path / "shards", squares(calls), 3)
    assert calls == [2] and again.records == first.records and again.shards_reused == 3


def test_shard_that_does_not_match_its_items_is_regenerated_with_a_warning(tmp_path):
    run_sharded(list(range(6)), tmp_path / "shards", squares([]), 3)
    path = tmp_path / "shards" / "00001.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")  # a record missing: not what the header promises
    calls = []
    with pytest.warns(UserWarning, match="00001.jsonl: shard does not match"):
        again = run_sharded(list(range(6)), tmp_path / "shards", squares(calls), 3)
    assert calls == [1] and [r["x"] for r in again.records] == list(range(6))
    header = json.loads(path.read_text().splitlines()[0])
    assert header["shard"] == 1 and header["records"] == 3


def test_shard_seed_is_per_shard_and_stable():
    assert shard_seed(0, 1) == shard_seed(0, 1) != shard_seed(0, 2)
    assert shard_seed(1, 1) != shard_seed(0, 1)


TEXTS = ["How do I fix a bike?", "Sure. To fix it, first look, then mend.", "I can't help you steal that."]


def tiny():
    tok = build_tokenizer(TEXTS, 300)
    model = build_model(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    return model, tok


def data():
    row = {"messages": [{"role": "user", "content": TEXTS[0]}, {"role": "assistant", "content": TEXTS[1]}]}
    return Dataset.from_list([row] * 24)


CFG = SFTStageConfig(learning_rate=1e-2, max_steps=6, per_device_train_batch_size=4, logging_steps=1, save_steps=2)


def test_partial_checkpoint_is_skipped_with_a_warning_and_resume_matches(tmp_path):
    model, tok = tiny()
    full = train_sft(model, tok, data(), CFG, str(tmp_path / "full"), seed=0)
    checkpoints = tmp_path / "full" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert checkpoint_problem(checkpoints / "checkpoint-6") is None

    # A run killed while saving checkpoint-6: the weights half-written, no completion marker.
    out = tmp_path / "killed"
    (out / "checkpoints").mkdir(parents=True)
    import shutil

    for name in ("checkpoint-4", "checkpoint-6"):
        shutil.copytree(checkpoints / name, out / "checkpoints" / name)
    weights = out / "checkpoints" / "checkpoint-6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert "truncated" in checkpoint_problem(out / "checkpoints" / "checkpoint-6")
    (out / "checkpoints" / "checkpoint-6" / COMPLETE).unlink()
    assert "no completion marker" in checkpoint_problem(out / "checkpoints" / "checkpoint-6")

    model, tok = tiny()
    with pytest.warns(UserWarning, match="checkpoint-6: skipping corrupt or partial checkpoint"):
        resumed = train_sft(model, tok, data(), CFG, str(out), seed=0)
    assert resumed["resumed_from_step"] == 4 and resumed["steps"] == 6
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], rel=1e-5)
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(out / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_checkpoint_problems_are_named(tmp_path):
    assert checkpoint_problem(tmp_path / "nope") == "not a checkpoint-N directory"
    ck = tmp_path / "checkpoints" / "checkpoint-3"
    ck.mkdir(parents=True)
    (ck / COMPLETE).write_text("3\n")
    assert "trainer_state.json unreadable" in checkpoint_problem(ck)
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    assert "at step 2, not 3" in checkpoint_problem(ck)
    with pytest.warns(UserWarning, match="checkpoint-3: skipping corrupt or partial checkpoint: trainer_state"):
        assert newest_valid_checkpoint(tmp_path) is None
    assert not ck.exists()  # deleted, so the Trainer never saves into or rotates by a half-written directory


WORDS = ["bike", "lock", "door", "car", "lamp", "kite", "boat", "tent"]


def varied_data():
    """20 conversations of different lengths, so the length-grouped sampler's order changes the batches."""
    rows = []
    for i in range(20):
        question = f"How do I fix the {WORDS[i % 8]}" + " please" * (i % 5) + "?"
        answer = "Sure. " + " ".join(["First look at it, then mend it."] * (1 + i % 3))
        rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    return rows


@pytest.mark.parametrize("checkpoint", ["checkpoint-6", "checkpoint-12"])
def test_resume_past_an_epoch_boundary_reaches_the_uninterrupted_weights(tmp_path, checkpoint):
    """20 rows in batches of 4: 5 steps per epoch, 3 epochs. Resumed from step 6 (epoch 2) or 12 (epoch 3), SFT
    must end with the weights and per-step losses of the uninterrupted run. Its length-grouped sampler used to
    shuffle from the global RNG, so every epoch after the first was drawn in another order after a resume."""
    import shutil

    from safetensors.torch import load_file

    rows = varied_data()
    texts = [m["content"] for r in rows for m in r["messages"]]

    def model_and_tokenizer():
        torch.manual_seed(0)
        tok = build_tokenizer(texts, 300)
        return build_model(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64), tok

    cfg = SFTStageConfig(
        learning_rate=1e-2,
        num_train_epochs=3,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_steps=3,
        save_total_limit=10,
        warmup_ratio=0,
    )
    full = train_sft(*model_and_tokenizer(), Dataset.from_list(rows), cfg, str(tmp_path / "full"), seed=0)
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full" / "checkpoints" / checkpoint, resumed_dir / "checkpoints" / checkpoint)
    resumed = train_sft(*model_and_tokenizer(), Dataset.from_list(rows), cfg, str(resumed_dir), seed=0)
    assert resumed["resumed_from_step"] == int(checkpoint.split("-")[1]) and resumed["steps"] == full["steps"] == 15

    def losses(directory):
        history = json.loads((directory / "log_history.json").read_text())
        return {h["step"]: h["loss"] for h in history if "loss" in h}

    assert losses(resumed_dir) == pytest.approx(losses(tmp_path / "full"), rel=1e-6)
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(resumed_dir / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


TRAIN_ON_FULL_DISK = """
import sys
from datasets import Dataset
from align.config import SFTStageConfig
from align.files import WriteError
from align.tiny.model import build_model, build_tokenizer
from align.train.sft import train_sft

texts = ["How do I fix a bike?", "Sure. To fix it, first look, then mend."]
tok = build_tokenizer(texts, 300)
model = build_model(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
row = {"messages": [{"role": "user", "content": texts[0]}, {"role": "assistant", "content": texts[1]}]}
cfg = SFTStageConfig(learning_rate=1e-2, max_steps=4, per_device_train_batch_size=4, save_steps=1)
try:
    train_sft(model, tok, Dataset.from_list([row] * 16), cfg, sys.argv[1], seed=0)
except WriteError as err:
    print(err)
    sys.exit(2)
"""


@needs_mount_namespace
def test_a_full_disk_during_a_trainer_checkpoint_names_the_file(tmp_path):
    """A real 400 KiB tmpfs: the first checkpoint (about 300 KiB) fits, the second runs out of space mid-save.
    torch.save says only "unexpected pos 64 vs 0"; the error must name the file and the full disk."""
    disk = tmp_path / "disk"
    disk.mkdir()
    env = {**os.environ, "TQDM_DISABLE": "1"}
    argv = [sys.executable, "-c", TRAIN_ON_FULL_DISK, disk / "sft"]
    result = run_mounted(argv, tmpfs={disk: "400k"}, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert re.fullmatch(
        rf"{disk}/sft/checkpoints/checkpoint-\d+/\S+: cannot write: No space left on device \(disk full\); "
        r"the checkpoint is incomplete and will not be resumed from; make room and run the same command again\n",
        result.stdout,
    ), result.stdout
    assert "Traceback" not in result.stderr
