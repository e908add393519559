"""The shipped real-model configs, end to end on CPU: each config, each foreign chat template, DPO and PPO.

`--limit 8` is the dry run the README promises: every stage on at most 8 prompts and 8 steps. The models are
random-initialised stand-ins of Qwen2 (ChatML), Llama (Llama 3) and Mistral (a template that rejects system
turns) architectures, and the data are fixture files in the real formats (HH-RLHF transcripts gzipped, chat
`messages`, XSTest's CSV, HHH multiple choice), all written by tests/helpers/real_world.py. The 7B config's
served critic is swapped for the in-process model, since no server runs here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.real_world import build_model_dir, write_fixtures

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "recipes" / "configs"
STAGES = ["sft", "critique_revise", "sft_cai", "preferences", "reward", "dpo", "ppo", "eval"]

pytestmark = pytest.mark.recipe


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("real")
    for kind in ("chatml", "llama3", "mistral"):
        build_model_dir(kind, root / kind)
    return root, write_fixtures(root / "data")


def run(root: Path, data: dict[str, Path], config: str, template: str, *args: str) -> subprocess.CompletedProcess:
    small = [f"--{s}.max_new_tokens=12" for s in ("ppo", "eval")]
    small += [f"--{s}.sampling.max_new_tokens=12" for s in ("critique_revise", "preferences")]
    small += ["--ppo.rollout_batch_size=4", "--ppo.mini_batch_size=2", "--ppo.gradient_accumulation_steps=1"]
    argv = [
        str(ROOT / "recipes" / "cai.py"),
        "--config",
        str(CONFIGS / config),
        "--limit=8",
        f"--output_dir={root / 'runs' / template}",
        "--report_to=none",
        f"--base_model={root / template}",
        f"--critique_revise.red_team_prompts={data['red_team']}",
        f"--critique_revise.helpful_prompts={data['messages']}",
        f"--preferences.prompts={data['mixed']}",
        f"--preferences.helpfulness={data['helpfulness']}",
        f"--eval.harmful_prompts={data['red_team']}",
        f"--eval.benign_prompts={data['messages']}",
        f"--eval.over_refusal={data['xstest']}",
        *small,
        *args,
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)


def check_run(run_dir: Path, optimizers: list[str]) -> dict:
    for stage in ["sft", "critique_revise", "sft_cai", "preferences", "reward", *optimizers, "eval"]:
        manifest = json.loads((run_dir / stage / "manifest.json").read_text())
        assert manifest["status"] == "done", stage
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"base", "sft_cai", *optimizers}
    for row in metrics.values():
        for key in ("harmful_refusal", "benign_helpful", "over_refusal", "xstest_safe_compliance"):
            assert 0.0 <= row[key] <= 1.0
    return metrics


@pytest.mark.parametrize("template", ["chatml", "llama3", "mistral"])
def test_single_gpu_config_with_sft_data_runs_every_stage(world, template):
    root, data = world
    config = "cai_qwen2.5_1.5b.yaml"
    result = run(root, data, config, template, f"--sft.dataset={data['messages']}", f"--eval.hhh={data['hhh']}")
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = root / "runs" / template / "cai-qwen2.5-1.5b-limit8"
    sft = json.loads((run_dir / "sft" / "manifest.json").read_text())
    assert sft["metrics"]["steps"] <= 8 and (run_dir / "sft" / "model.safetensors").exists()  # fine-tuned
    samples = [json.loads(line) for line in (run_dir / "critique_revise" / "samples.jsonl").open()]
    assert sum(s["kind"] == "red_team" for s in samples) == 8  # --limit 8 of the 11 distinct transcripts
    ppo = run(
        root,
        data,
        config,
        template,
        f"--sft.dataset={data['messages']}",
        f"--eval.hhh={data['hhh']}",
        "--optimizer=ppo",
    )
    assert ppo.returncode == 0, ppo.stderr[-4000:]
    assert "[align] reward: done with the same inputs, skipped" in ppo.stdout
    metrics = check_run(run_dir, ["dpo", "ppo"])  # the dpo row stays: every finished optimiser model is evaluated
    assert all(0.0 <= row["hhh_accuracy"] <= 1.0 for row in metrics.values())


@pytest.mark.parametrize("template", ["chatml", "llama3", "mistral"])
def test_eight_gpu_config_without_sft_data_uses_the_base_model_as_it_is(world, template):
    root, data = world
    config = "cai_mistral_7b_8gpu.yaml"
    served = ["--critique_revise.feedback_model=null", "--critique_revise.backend.kind=transformers"]
    result = run(root, data, config, template, *served)
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = root / "runs" / template / "cai-mistral-7b-limit8"
    assert json.loads((run_dir / "sft" / "model.json").read_text()) == {"model": str(root / template)}
    assert not (run_dir / "sft" / "model.safetensors").exists()  # the base model is not copied
    ppo = run(root, data, config, template, *served, "--optimizer=ppo")
    assert ppo.returncode == 0, ppo.stderr[-4000:]
    check_run(run_dir, ["dpo", "ppo"])
