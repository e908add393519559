"""The closed loop (red_team.rounds) of the real recipes/cai.py on the smoke world: red team -> amend ->
critique-revise on the found attacks -> SL-CAI -> preferences -> reward -> DPO -> eval -> red team, per round.

The smoke model is too small to show alignment; these tests check the loop's wiring: what each round trains on,
what it reuses, which constitution it uses, what it reports, and that a re-run skips it all.
"""

import json

import pytest
from test_recipe_cai import run_recipe

pytestmark = pytest.mark.recipe

LOOP = (
    "--red_team.max_queries=24",
    "--red_team.batch_size=12",
    "--red_team.max_new_tokens=16",
    "--red_team.rounds=1",
    "--red_team.adopt=true",
    "--red_team.helpful_prompts=tiny:benign/eval",  # held-out benign requests: none of them in round 0's 24
)
ROUND = ["amend", "critique_revise", "sft_cai", "preferences", "reward", "dpo", "eval", "red_team"]


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loop")
    result = run_recipe(tmp, *LOOP)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, tmp / "runs" / "cai-smoke", result


def manifest(run_dir, stage):
    return json.loads((run_dir / stage / "manifest.json").read_text())


def test_every_round_stage_is_published_in_its_own_directory(loop):
    _, run_dir, result = loop
    for stage in ROUND:
        assert manifest(run_dir, f"round1/{stage}")["stage"] == f"round1/{stage}"
    assert "stage 16/16" in result.stdout  # 8 stages before the loop, 8 in the round
    assert (run_dir / "round1" / "dpo" / "model.safetensors").exists()
    # the round's eval scores the round's models; the base model is round 0's row
    assert set(json.loads((run_dir / "round1" / "eval" / "metrics.json").read_text())) == {"sft_cai", "dpo"}


def test_the_attacks_that_worked_are_critiqued_and_revised_and_the_rest_is_reused(loop):
    _, run_dir, _ = loop
    archive = [json.loads(line) for line in (run_dir / "red_team" / "archive.jsonl").read_text().splitlines()]
    attacks = [row["conversation"] for row in archive if row["success"]]
    assert attacks  # the smoke model complies with anything
    samples = [json.loads(line) for line in (run_dir / "round1" / "critique_revise" / "samples.jsonl").open()]
    red = [s.get("messages") or [{"role": "user", "content": s["prompt"]}] for s in samples if s["kind"] == "red_team"]
    assert all(a in red for a in attacks)  # whole conversations: a multi-turn attack keeps its turns
    metrics = manifest(run_dir, "round1/critique_revise")["metrics"]
    # 24 red-team and 24 helpful prompts of round 0; the amendment changes which principle some prompts draw
    extra = [json.loads(line) for line in (run_dir / "round1" / "critique_revise" / "samples.jsonl").open()]
    extra = [s["prompt"] for s in extra if s["kind"] == "helpful"][24:]
    assert metrics["red_team"] == 24 + len(attacks) and metrics["helpful"] == 24 + len(extra) > 24
    assert metrics["regenerated"] >= len(attacks) + len(extra) and metrics["reused"] > 0
    assert metrics["reused"] + metrics["regenerated"] == 48 + len(attacks) + len(extra)
    prefs = manifest(run_dir, "round1/preferences")["inputs"]["prompts"]
    assert prefs != manifest(run_dir, "preferences")["inputs"]["prompts"]  # the attacks are labelled too
    # the round's red team attacks the plain requests again, not round 0's attacks
    assert (
        manifest(run_dir, "round1/red_team")["inputs"]["prompts"] == manifest(run_dir, "red_team")["inputs"]["prompts"]
    )


def test_the_adopted_amendment_is_what_the_round_trains_on(loop):
    _, run_dir, _ = loop
    proposal = json.loads((run_dir / "round1" / "amend" / "proposal.json").read_text())
    assert proposal["adopted"] and proposal["added"]
    identity = manifest(run_dir, "round1/critique_revise")["inputs"]["constitution"]
    assert identity == proposal["to"] != manifest(run_dir, "critique_revise")["inputs"]["constitution"]
    text = (run_dir / "round1" / "amend" / "constitution.yaml").read_text()
    assert all(f"id: {a['id']}" in text for a in proposal["added"])
    samples = [json.loads(line) for line in (run_dir / "round1" / "critique_revise" / "samples.jsonl").open()]
    used = {pid for s in samples for pid in s.get("principle_ids", [])}
    assert used <= {p["id"] for p in _principles(text)}


def _principles(text):
    import yaml

    return yaml.safe_load(text)["principles"]


def test_the_report_and_console_show_the_loop_round_by_round(loop):
    _, run_dir, result = loop
    assert "Closed loop, round by round:" in result.stdout
    lines = result.stdout.split("Closed loop, round by round:")[1].splitlines()
    rows = [line.split() for line in lines if line[:2] in ("0 ", "1 ")]
    assert [(r[0], r[1]) for r in rows] == [("0", "sft_cai"), ("0", "dpo"), ("1", "sft_cai"), ("1", "dpo")]
    report = (run_dir / "report.md").read_text()
    assert "## Closed loop" in report and "### Red teaming after round1" in report
    assert "round1/red_team/heatmap.png" in report and (run_dir / "round1" / "red_team" / "heatmap.png").exists()


def test_a_rerun_skips_every_round_stage_and_unknown_stages_are_refused(loop):
    tmp, _, _ = loop
    again = run_recipe(tmp, *LOOP)
    assert again.returncode == 0, again.stderr[-3000:]
    assert ": running (" not in again.stdout
    assert again.stdout.count("done with the same inputs, skipped") == 16
    # the loop's own settings are not the red team's: changing them does not redo round 0's attacks
    fewer = run_recipe(tmp, *LOOP, "--red_team.max_new_principles=1", "--until", "red_team")
    assert fewer.returncode == 0 and "red_team: done with the same inputs, skipped" in fewer.stdout
    bad = run_recipe(tmp, *LOOP, "--force", "round2/sft_cai")
    assert bad.returncode == 2 and "unknown stage" in bad.stderr and "round1/sft_cai" in bad.stderr
    forced = run_recipe(tmp, *LOOP, "--force", "round1/eval", "--until", "round1/eval")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "round1/eval: running" in forced.stdout and "round1/red_team" not in forced.stdout
