"""The real recipes/cai.py, end to end, on the smoke config's smaller tiny world.

The chain runs once per module (about a minute on 2 cores); the tests then read what it wrote.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.mounts import needs_mount_namespace

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "cai.py"
SMOKE = ROOT / "recipes" / "configs" / "cai_smoke.yaml"
STAGES = ["sft", "critique_revise", "sft_cai", "preferences", "reward", "dpo", "eval"]

pytestmark = pytest.mark.recipe


def run_recipe(
    tmp: Path, *args: str, config: Path = SMOKE, wandb_mode: str = "disabled", bars: bool = False
) -> subprocess.CompletedProcess:
    """The recipe in a subprocess, its output captured (not a terminal); ``bars`` leaves tqdm switched on."""
    env = {**os.environ, "ALIGN_CACHE": str(tmp / "cache"), "WANDB_MODE": wandb_mode, "TQDM_DISABLE": "1"}
    env.pop("WANDB_API_KEY", None)
    if bars:
        env.pop("TQDM_DISABLE")
    return subprocess.run(
        [sys.executable, str(RECIPE), "--config", str(config), f"--output_dir={tmp / 'runs'}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recipe")
    result = run_recipe(tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, tmp / "runs" / "cai-smoke", result


def test_every_stage_published_with_manifest(smoke):
    _, run_dir, _ = smoke
    for stage in STAGES:
        manifest = json.loads((run_dir / stage / "manifest.json").read_text())
        assert manifest["status"] == "done" and manifest["stage"] == stage
        assert manifest["input_hash"] and manifest["seconds"] >= 0
        assert not (run_dir / f"{stage}.partial").exists()
    for stage in ("sft", "sft_cai", "reward", "dpo"):
        assert (run_dir / stage / "model.safetensors").exists()


def test_eval_table_and_metrics(smoke):
    _, run_dir, result = smoke
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"base", "sft_cai", "dpo"}
    for row in metrics.values():
        for key in ("harmful_refusal", "benign_helpful", "over_refusal", "mean_response_words"):
            assert 0 <= row[key] <= (1 if key != "mean_response_words" else 1000)
    # the helpful-only base model never saw a plain refusal, so it cannot refuse
    assert metrics["base"]["harmful_refusal"] <= 0.2
    assert "| model | harmful_refusal | benign_helpful | over_refusal |" in result.stdout
    assert "| dpo |" in result.stdout
    # the run's report, with its plots (the loss curves come from the training stages' logged history)
    assert f"Report: {run_dir / 'report.md'}" in result.stdout
    assert "| dpo |" in (run_dir / "report.md").read_text()
    for plot in ("training_loss.png", "alignment.png"):
        assert (run_dir / "report" / plot).stat().st_size > 5000


def test_samples_have_provenance(smoke):
    _, run_dir, _ = smoke
    from align.constitution import load_constitution

    constitution = load_constitution(ROOT / "constitutions" / "harmless.yaml")
    rows = [json.loads(line) for line in (run_dir / "critique_revise" / "samples.jsonl").open()]
    sft_id = json.loads((run_dir / "sft" / "manifest.json").read_text())["output_id"]
    assert sum(r["kind"] == "red_team" for r in rows) == 24 and sum(r["kind"] == "helpful" for r in rows) == 24
    for r in rows:
        assert r["constitution"]["hash"] == constitution.content_hash
        assert r["constitution"]["version"] == constitution.version
        # the policy is named by the SFT stage's output id, so samples are never reused across retrained models
        assert r["policy_model"] == f"{run_dir}/sft@{sft_id}" and r["generation"]["temperature"] == 0.7
        for step in r["rounds"]:
            assert step["principle_hash"] == constitution.principle(step["principle_id"]).content_hash
    sft_rows = [json.loads(line) for line in (run_dir / "critique_revise" / "sft.jsonl").open()]
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in sft_rows)


def test_every_published_model_has_a_card_with_its_eval_rows(smoke):
    from huggingface_hub import ModelCard

    _, run_dir, _ = smoke
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    for stage, row in (("sft", "base"), ("sft_cai", "sft_cai"), ("dpo", "dpo")):
        card = ModelCard.load(run_dir / stage / "README.md")
        assert card.data.to_dict()["tags"] == ["constitutional-ai", "align", stage]
        rate = f"{metrics[row]['harmful_refusal']:.3f}".rstrip("0").rstrip(".")
        assert any(line.startswith(f"| {row} | {rate} |") for line in card.text.splitlines()), card.text
    assert not (run_dir / "reward" / "README.md").exists()  # a reward model is not a chat model to publish


def test_second_run_skips_every_stage_and_force_cascades(smoke):
    tmp, run_dir, _ = smoke
    assert all((run_dir / stage / "README.md").exists() for stage in ("sft", "sft_cai", "dpo"))  # cards written
    again = run_recipe(tmp)
    assert again.returncode == 0, again.stderr[-2000:]
    for stage in STAGES:
        assert f"[align] {stage}: done with the same inputs, skipped" in again.stdout
    before = json.loads((run_dir / "sft_cai" / "manifest.json").read_text())["output_id"]
    forced = run_recipe(tmp, "--force", "dpo")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "[align] sft_cai: done with the same inputs, skipped" in forced.stdout
    assert "[align] dpo: running" in forced.stdout and "[align] eval: running" in forced.stdout
    assert json.loads((run_dir / "sft_cai" / "manifest.json").read_text())["output_id"] == before


def test_constitution_edit_regenerates_only_the_samples_of_the_edited_principle(smoke, tmp_path):
    """Reword one principle in a copy of the constitution: SFT is reused, and so is every sample of the others."""
    tmp, run_dir, _ = smoke
    from align.constitution import load_constitution

    samples = [json.loads(line) for line in (run_dir / "critique_revise" / "samples.jsonl").open()]
    used = [r["principle_ids"][0] for r in samples if r["kind"] == "red_team"]
    target = max(set(used), key=used.count)
    original = load_constitution(ROOT / "constitutions" / "harmless.yaml")
    data = original.to_dict()
    for p in data["principles"]:
        if p["id"] == target:
            p["critique"] = "Say plainly what in the last response could lead to harm, if anything."
    edited = tmp_path / "harmless-edited.yaml"
    edited.write_text(yaml.safe_dump(data, sort_keys=False))
    result = run_recipe(tmp, f"--constitution={edited}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[align] sft: done with the same inputs, skipped" in result.stdout
    metrics = json.loads((run_dir / "critique_revise" / "manifest.json").read_text())["metrics"]
    assert metrics["regenerated"] == used.count(target) > 0
    assert metrics["reused"] == len(samples) - used.count(target)
    assert f"reused {metrics['reused']} samples, regenerated {metrics['regenerated']}" in result.stdout
    # put the run back as the other tests expect it (the original constitution, all reused but the edited)
    restored = run_recipe(tmp)
    assert restored.returncode == 0, restored.stderr[-3000:]


def test_ai_labels_and_reward_model(smoke):
    _, run_dir, result = smoke
    labels = [json.loads(line) for line in (run_dir / "preferences" / "labels.jsonl").open()]
    rows = [json.loads(line) for line in (run_dir / "preferences" / "preferences.jsonl").open()]
    # the smoke config mixes in 8 helpfulness pairs: the world's helpful answer over its refusal, label 1
    helpfulness = [r for r in rows if r.get("source") == "helpfulness"]
    assert len(helpfulness) == 8
    from align.tiny.world import REFUSAL_MARKER

    for r in helpfulness:
        assert r["label"] == 1.0 and r["rejected"][0]["content"].startswith(REFUSAL_MARKER)
        assert r["chosen"][0]["content"].startswith("Sure.")
    prefs = [r for r in rows if r.get("source") != "helpfulness"]
    assert len(labels) == len(prefs) > 0
    for label, pref in zip(labels, prefs):
        assert len(label["principles"]) == 2 and 0 <= label["p_first_better"] <= 1
        assert 0.5 <= pref["label"] <= 1 and pref["chosen"] != pref["rejected"]
        assert pref["constitution"]["name"] == "harmless" and pref["models"]["feedback"].endswith(
            json.loads((run_dir / "sft" / "manifest.json").read_text())["output_id"]
        )
    metrics = json.loads((run_dir / "preferences" / "manifest.json").read_text())["metrics"]
    assert metrics["pairs"] == len(prefs) and metrics["pairs"] + metrics["identical_dropped"] == 48
    assert metrics["helpfulness_pairs"] == 8
    assert 0 <= metrics["ai_judge_agreement"] <= 1
    reward = json.loads((run_dir / "reward" / "manifest.json").read_text())["metrics"]
    assert reward["eval_pairs"] == round(0.25 * len(rows))
    assert "Reward model on" in result.stdout and "AI labels agree with the reference judge" in result.stdout


def test_generating_stages_record_throughput(smoke):
    _, run_dir, _ = smoke
    cr = json.loads((run_dir / "critique_revise" / "manifest.json").read_text())["metrics"]
    prefs = json.loads((run_dir / "preferences" / "manifest.json").read_text())["metrics"]
    evals = json.loads((run_dir / "eval" / "manifest.json").read_text())["metrics"]
    # at most a response, critique and revision per red-team prompt plus the helpful answers (fewer when an
    # earlier test's constitution edit left only some samples to regenerate)
    assert 0 < cr["samples_generated"] <= 24 * 3 + 24
    assert prefs["samples_generated"] == 2 * 48  # two responses per prompt
    for m in (cr, prefs, *evals.values()):
        assert m["tokens_generated"] > 0 and m["generation_seconds"] > 0
        # generation_seconds is rounded to 1 ms and tokens_per_second to 0.1, computed before rounding (at a few
        # tokens/s, on a loaded machine, the 0.05 of rounding is more than 0.1% of it)
        seconds = m["generation_seconds"]
        low, high = m["tokens_generated"] / (seconds + 5e-4), m["tokens_generated"] / max(seconds - 5e-4, 1e-9)
        assert low * 0.999 - 0.05 <= m["tokens_per_second"] <= high * 1.001 + 0.05


FAKE_KEY = "fake-key-0123456789abcdef0123456789abcdef01234567"


def check_quiet_console(result: subprocess.CompletedProcess, run_dir: Path) -> None:
    """The smoke recipe with W&B offline, to a pipe: at most 40 lines (it was 249: W&B banners and sync hints,
    weight-loading and shard-writing bars, library warnings). A line per stage start and finish with stage k/N
    and the time, a line per generation with samples/s and tokens/s, the table and the report; everything else
    is in the run's log file."""
    lines = result.stdout.splitlines() + result.stderr.splitlines()
    assert len(lines) <= 40, "\n".join(lines)
    assert not [line for line in lines if line.startswith("wandb") or "Warning" in line], "\n".join(lines)
    for k, stage in enumerate(STAGES, start=1):
        assert re.search(rf"^\[align\] {stage}: running \(stage {k}/7, \S+ elapsed", result.stdout, re.M), stage
        assert re.search(
            rf"^\[align\] {stage}: done in \S+ \(stage {k}/7, \S+ elapsed, about \S+ left\)$", result.stdout, re.M
        )
    generated = re.findall(
        r"^\[align\] (.+): generated \d+ samples in \S+s \([\d.]+ samples/s, \d+ tokens/s\)$", result.stdout, re.M
    )
    evals = [f"eval {model} {suite}" for model in ("base", "sft_cai", "dpo") for suite in ("harmful", "benign")]
    assert generated == ["critique_revise", "preferences", *evals]
    assert "| dpo |" in result.stdout and f"Report: {run_dir / 'report.md'}" in result.stdout
    (log,) = (run_dir / "logs").glob("*.log")
    text = log.read_text()
    assert "[align] sft_cai: running" in text and re.search(r"\[align\] sft_cai step \d+: \{", text)  # Trainer's too


def test_ppo_killed_mid_run_resumes_from_its_checkpoint_and_finishes(smoke, tmp_path):
    """--optimizer=ppo reuses every stage up to the reward model; SIGKILL it after a checkpoint, run it again."""
    import shutil
    import signal
    import time

    _, run_dir, _ = smoke
    shutil.copytree(run_dir, tmp_path / "runs" / "cai-smoke")
    args = ["--optimizer=ppo", "--ppo.steps=10", "--ppo.save_steps=2"]
    env = {**os.environ, "ALIGN_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}
    command = [sys.executable, str(RECIPE), "--config", str(SMOKE), f"--output_dir={tmp_path / 'runs'}", *args]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "runs" / "cai-smoke" / "ppo.partial" / "checkpoints" / "step-000004"
    deadline = time.time() + 600
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "PPO finished (or failed) before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "runs" / "cai-smoke" / "ppo").exists()

    again = run_recipe(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[align] reward: done with the same inputs, skipped" in again.stdout
    assert "ppo: resumed from" in again.stdout and "(step 4 of 10)" in again.stdout
    ppo_dir = tmp_path / "runs" / "cai-smoke" / "ppo"
    history = json.loads((ppo_dir / "log_history.json").read_text())
    assert [row["step"] for row in history] == list(range(1, 11))  # every step once: none lost or repeated
    assert not (ppo_dir / "checkpoints").exists() and (ppo_dir / "model.safetensors").exists()
    metrics = json.loads((tmp_path / "runs" / "cai-smoke" / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"base", "sft_cai", "dpo", "ppo"}  # the earlier run's finished dpo keeps its row
    assert "| ppo |" in again.stdout


def test_wandb_offline_one_run_per_stage_with_lineage_tables_and_no_secrets(tmp_path, monkeypatch):
    from align.tracking import read_offline_run

    # a planted credential must not reach any logged config, file or report
    monkeypatch.setenv("HF_TOKEN", "hf_" + FAKE_KEY)
    result = run_recipe(tmp_path, "--report_to=wandb", wandb_mode="offline", bars=True)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "runs" / "cai-smoke"
    check_quiet_console(result, run_dir)
    runs = {}
    for folder in (run_dir / "wandb").glob("offline-run-*"):
        records = read_offline_run(next(folder.glob("*.wandb")))
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
        runs[run.job_type] = (run, artifacts, folder)
    assert sorted(runs) == sorted(STAGES)  # one run per stage, job type = stage name
    assert {run.run_group for run, _, _ in runs.values()} == {"cai-smoke"}

    identity = json.loads((run_dir / "constitution.json").read_text())["identity"]
    for stage in ("critique_revise", "preferences"):
        _, artifacts, _ = runs[stage]
        by_type = {a.type: a for a in artifacts}
        assert by_type["constitution"].name == "constitution-harmless"
        assert "1.0.0" in by_type["constitution"].aliases  # the version is the alias
        assert json.loads(by_type["dataset"].metadata)["constitution"] == identity
    # the SFT-on-revisions model records the dataset it was trained on
    _, artifacts, _ = runs["sft_cai"]
    (model,) = [a for a in artifacts if a.type == "model"]
    assert json.loads(model.metadata)["inputs"]["data"].startswith("critique_revise:")

    _, _, folder = runs["critique_revise"]
    (table,) = (folder / "files" / "media" / "table").glob("samples_*.table.json")
    columns = json.loads(table.read_text())["columns"]
    assert columns == ["prompt", "initial_response", "round", "principle", "critique", "revision"]

    for path in run_dir.rglob("*"):
        if path.is_file() and path.suffix not in (".safetensors",):
            assert FAKE_KEY.encode() not in path.read_bytes(), path


# ---- bad input: a clear error, exit code 2, and no stage output left behind


def assert_clean_failure(result, tmp: Path, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    for needle in needles:
        assert needle in result.stderr
    assert "Traceback" not in result.stderr
    runs = tmp / "runs"
    leftovers = [p for p in runs.rglob("*") if p.is_dir() and p.name.endswith(".partial")] if runs.exists() else []
    assert not leftovers


def test_missing_config_file(tmp_path):
    result = run_recipe(tmp_path, config=tmp_path / "nope.yaml")
    assert_clean_failure(result, tmp_path, "nope.yaml: config file not found")


def test_unknown_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text().replace("  max_steps: 60", "  max_step: 60"))
    result = run_recipe(tmp_path, config=bad)
    assert_clean_failure(result, tmp_path, "bad.yaml:", "sft.max_step: unknown key", "max_steps")


def test_constitution_without_principles(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("name: empty\nversion: 1.0.0\ndescription: x\nprinciples: []\n")
    result = run_recipe(tmp_path, f"--constitution={empty}")
    assert_clean_failure(result, tmp_path, "empty.yaml", "principles")
    assert not (tmp_path / "runs").exists()


def test_empty_prompt_file(tmp_path):
    prompts = tmp_path / "red.jsonl"
    prompts.write_text("")
    result = run_recipe(
        tmp_path, f"--critique_revise.red_team_prompts={prompts}", "--sft.max_steps=2", "--world.n_phrasings=2"
    )
    assert_clean_failure(result, tmp_path, "red.jsonl", "empty")
    assert not (tmp_path / "runs" / "cai-smoke" / "critique_revise").exists()


PASTED_KEY = "sk-proj-" + "Qw3rTy7uI0oP4aS8dF2gH6jK1lZ5xC9v"
URL_PASSWORD = "hunter2-" + "correct-horse-battery"


def test_credentials_in_config_values_reach_no_file_and_settings_stay(tmp_path):
    """A key pasted where its variable's name belongs, and a password in a URL, reach no manifest, report, log
    or W&B file; and max_new_tokens still does (the W&B scrubber used to drop every key with "token")."""
    from align.report import write_report
    from align.tracking import read_offline_run

    config = yaml.safe_load(SMOKE.read_text())
    config["critique_revise"]["backend"] = {
        "api_key_env": PASTED_KEY,
        "base_url": f"http://me:{URL_PASSWORD}@127.0.0.1:9/v1",
    }
    pasted = tmp_path / "pasted.yaml"
    pasted.write_text(yaml.safe_dump(config))
    quick = ["--sft.max_steps=2", "--world.n_phrasings=2", "--until=critique_revise", "--report_to=wandb"]
    result = run_recipe(tmp_path, *quick, config=pasted, wandb_mode="offline")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "cai-smoke"
    write_report(run_dir)
    files = [p for p in run_dir.rglob("*") if p.is_file() and p.suffix != ".safetensors"]
    assert any(p.name == "report.md" for p in files) and any(p.suffix == ".wandb" for p in files)
    for path in files:
        data = path.read_bytes()
        assert PASTED_KEY.encode() not in data and URL_PASSWORD.encode() not in data, path
    for secret in (PASTED_KEY, URL_PASSWORD):
        assert secret not in result.stdout + result.stderr
    manifest = json.loads((run_dir / "critique_revise" / "manifest.json").read_text())
    assert manifest["config"]["sampling"]["max_new_tokens"] == 24
    assert manifest["config"]["backend"]["base_url"] == "http://[redacted]@127.0.0.1:9/v1"
    stage_configs = {}
    for folder in (run_dir / "wandb").glob("offline-run-*"):
        records = read_offline_run(next(folder.glob("*.wandb")))
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        items = {item.key: json.loads(item.value_json) for item in run.config.update}
        stage_configs[run.job_type] = items["stage_config"]
    assert stage_configs["critique_revise"]["sampling"]["max_new_tokens"] == 24


@needs_mount_namespace
def test_a_finished_run_on_a_read_only_filesystem(smoke, tmp_path):
    """Re-running a finished run from a read-only copy shows its result (nothing needs writing: the snapshot,
    report and plots are unchanged, so they are left alone); a stage that must run is a clean error naming
    the path. Both used to fail with EROFS tracebacks (the constitution snapshot was rewritten first)."""
    import shutil

    from helpers.mounts import run_mounted

    _, run_dir, _ = smoke
    runs = tmp_path / "runs"
    shutil.copytree(run_dir, runs / "cai-smoke")
    env = {**os.environ, "ALIGN_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}
    command = [sys.executable, str(RECIPE), "--config", str(SMOKE), f"--output_dir={runs}"]
    again = run_mounted(command, read_only=[runs], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in STAGES:
        assert f"[align] {stage}: done with the same inputs, skipped" in again.stdout
    assert "| dpo |" in again.stdout and "Traceback" not in again.stderr
    forced = run_mounted(
        [*command, "--force", "eval"], read_only=[runs], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert forced.returncode == 2 and "Traceback" not in forced.stderr, forced.stderr[-3000:]
    assert f"error: {runs / 'cai-smoke' / 'eval.partial'}: cannot write: Read-only file system" in forced.stderr
