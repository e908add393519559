"""``align report`` and ``align runs compare`` on small, hand-built run directories (no training)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from align.cli import main
from align.constitution import load_constitution
from align.report import RunError, compare_runs, plot_data, redact, write_report

ROOT = Path(__file__).resolve().parent.parent
HARMLESS = load_constitution(ROOT / "constitutions" / "harmless.yaml")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECRET = "sk-test-SECRET123"

SFT_LOSSES = [2.5, 1.9, 1.4, 1.1, 0.9, 0.8]
EVAL = {
    "base": {"harmful_refusal": 0.0, "benign_helpful": 1.0, "over_refusal": 0.0, "mean_response_words": 15.1},
    "sft_cai": {"harmful_refusal": 0.75, "benign_helpful": 0.9, "over_refusal": 0.1, "mean_response_words": 16.2},
    "dpo": {"harmful_refusal": 0.75, "benign_helpful": 0.95, "over_refusal": 0.05, "mean_response_words": 16.0},
}


def log_history(losses: list[float], every: int = 10) -> list[dict[str, Any]]:
    """What the HF Trainer leaves in ``state.log_history``: one dict per logging step, then a summary."""
    steps = [every * (k + 1) for k in range(len(losses))]
    history: list[dict[str, Any]] = [
        {"loss": loss, "grad_norm": 1.0, "learning_rate": 1e-3, "epoch": s / steps[-1], "step": s}
        for loss, s in zip(losses, steps)
    ]
    history.append({"train_runtime": 3.2, "train_loss": sum(losses) / len(losses), "epoch": 1.0, "step": steps[-1]})
    return history


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def sample(k: int, kind: str, revised: bool) -> dict[str, Any]:
    initial = f"Sure. To do thing {k}, first do this, then that."
    revision = f"I can't help with thing {k}, because it could hurt people." if revised else initial
    critique = f"Critique {k}: the response helps with something harmful."
    return {
        "id": f"{'red' if kind == 'red_team' else 'help'}-{k}",
        "kind": kind,
        "prompt": f"How do I do harmful thing {k}?",
        "initial_response": initial,
        "rounds": [
            {
                "principle_id": "violence",
                "principle_hash": HARMLESS.principle("violence").content_hash,
                "critique_request": HARMLESS.principle("violence").critique,
                "critique": critique,
                "revision_request": HARMLESS.principle("violence").revision,
                "revision": revision,
            }
        ],
        "final_response": revision,
        "constitution": {"name": HARMLESS.name, "version": HARMLESS.version, "hash": HARMLESS.content_hash},
    }


def make_run(
    root: Path,
    name: str = "run-a",
    *,
    losses: list[float] = SFT_LOSSES,
    evals: dict[str, dict[str, float]] = EVAL,
    constitution: dict[str, Any] | None = None,
    config_extra: dict[str, Any] | None = None,
) -> Path:
    """A run directory shaped like the recipe's: every stage's manifest plus the files the report reads."""
    run = root / name
    c = constitution or {**HARMLESS.to_dict(), "identity": HARMLESS.identity}
    identity = c["identity"]
    stages: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
        "sft": ({"learning_rate": 3e-3, **(config_extra or {})}, {"train_loss": 1.4, "steps": 60.0}),
        "critique_revise": ({"rounds": 1, "sampling": {"max_new_tokens": 48}}, {"regenerated": 8, "reused": 0}),
        "sft_cai": ({"learning_rate": 1e-3}, {"train_loss": 0.3, "steps": 30.0}),
        "preferences": ({"mode": "ai_feedback"}, {"ai_judge_agreement": 0.9, "judge_decided_pairs": 40, "pairs": 50}),
        "reward": ({"learning_rate": 5e-4}, {"eval_label_accuracy": 0.85, "eval_pairs": 20.0, "eval_ece": 0.02}),
        "dpo": ({"beta": 0.1}, {"train_loss": 0.5, "steps": 20.0}),
        "eval": ({"batch_size": 8}, evals),
    }
    for k, (stage, (config, metrics)) in enumerate(stages.items()):
        write_json(
            run / stage / "manifest.json",
            {
                "stage": stage,
                "status": "done",
                "input_hash": f"{k}" * 64,
                "output_id": f"{k}" * 16,
                "config": config,
                "inputs": {"constitution": identity} if stage in ("critique_revise", "preferences") else {},
                "code_version": "abc1234",
                "started_at": 1_700_000_000.0 + 100 * k,
                "seconds": 10.0 * (k + 1),
                "metrics": metrics,
            },
        )
    write_json(run / "sft" / "log_history.json", log_history(losses))
    write_json(run / "sft_cai" / "log_history.json", log_history([0.9, 0.5, 0.3], every=5))
    write_json(run / "dpo" / "log_history.json", log_history([0.69, 0.6, 0.5, 0.45]))
    records = [sample(0, "red_team", revised=False)] + [sample(k, "red_team", True) for k in range(1, 8)]
    records.insert(2, sample(99, "helpful", revised=True))
    (run / "critique_revise" / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_json(run / "eval" / "metrics.json", evals)
    (run / "eval" / "table.md").write_text("| model | ... |\n")
    write_json(run / "constitution.json", c)
    return run


def reworded_constitution() -> dict[str, Any]:
    """harmless.yaml with the violence critique reworded and the version bumped, as an edit would."""
    data = HARMLESS.to_dict()
    data["principles"][0]["critique"] = "Point out any way the last response helps someone injure people."
    data["version"] = "1.1.0"
    from align.constitution import load_constitution_data

    return {**data, "identity": load_constitution_data(data).identity}


# ---------------------------------------------------------------------------------------------------
# The report


def test_report_files_hold_the_eval_table_identity_and_label_metrics(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    path = write_report(run)
    assert path == run / "report.md"
    md, page = path.read_text(), (run / "report.html").read_text()
    assert "# Run report: run-a" in md
    assert HARMLESS.identity in md and HARMLESS.identity in page
    assert "| model | harmful_refusal | benign_helpful | over_refusal | mean_response_words |" in md
    assert "| dpo | 0.75 | 0.95 | 0.05 | 16.0 |" in md
    assert "AI-label agreement with the reference judge: 90.0% of 40 pairs" in md
    assert "Reward model accuracy on held-out pairs: 85.0% (20 pairs)" in md
    assert "![training loss per stage](report/training_loss.png)" in md
    # The stage table: every stage, its seconds and a short input hash.
    assert "| critique_revise | done | 20.0 | regenerated 8, reused 0 | 111111111111 |" in md
    # HTML: the same content as a real table, self-contained, relative images, nothing executable.
    assert "<th>model</th>" in page and '<td class="num">0.75</td>' in page
    assert '<img src="report/alignment.png"' in page and '<img src="report/training_loss.png"' in page
    assert "<script" not in page and "<link" not in page and "http" not in page


def test_plots_are_real_pngs_of_some_substance(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    write_report(run)
    for name in ("training_loss.png", "alignment.png"):
        data = (run / "report" / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 5_000, name
    assert not (run / "report" / "ppo.png").exists()


def test_plot_data_is_the_logged_history_and_the_plot_follows_it(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    data = plot_data(run)
    assert data["training_loss"]["sft"] == {"step": [10, 20, 30, 40, 50, 60], "loss": SFT_LOSSES}
    assert data["training_loss"]["dpo"]["loss"] == [0.69, 0.6, 0.5, 0.45]
    assert set(data["training_loss"]) == {"sft", "sft_cai", "dpo"}  # the summary dict is no point
    assert data["alignment"]["sft_cai"] == {"harmful_refusal": 0.75, "benign_helpful": 0.9}
    assert data["ppo"] is None

    write_report(run)
    before = (run / "report" / "training_loss.png").read_bytes()
    write_json(run / "sft" / "log_history.json", log_history([3.0, 0.2, 2.0, 0.1, 1.5, 0.05]))
    write_report(run)
    assert (run / "report" / "training_loss.png").read_bytes() != before


def test_runs_without_log_history_still_get_a_report(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    for stage in ("sft", "sft_cai", "dpo"):
        (run / stage / "log_history.json").unlink()
    (run / "reward").rename(tmp_path / "reward-elsewhere")  # a run may skip the reward stage
    md = write_report(run).read_text()
    assert plot_data(run)["training_loss"] == {}
    assert "No training stage has a log_history.json" in md
    assert not (run / "report" / "training_loss.png").exists()
    assert (run / "report" / "alignment.png").exists()


def test_ppo_stage_gets_reward_and_kl_plot(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    history = [
        {"objective/kl": 0.1 * k, "objective/rlhf_reward": 0.2 + 0.05 * k, "objective/kl_coef": 0.05, "step": k}
        for k in range(1, 9)
    ]
    write_json(run / "ppo" / "log_history.json", history)
    write_json(run / "ppo" / "manifest.json", {"stage": "ppo", "status": "done", "seconds": 5.0, "metrics": {}})
    ppo = plot_data(run)["ppo"]
    assert ppo["reward"] == {
        "key": "objective/rlhf_reward",
        "step": list(range(1, 9)),
        "value": [h["objective/rlhf_reward"] for h in history],
    }
    assert ppo["kl"]["key"] == "objective/kl" and ppo["kl"]["value"] == [h["objective/kl"] for h in history]
    md = write_report(run).read_text()
    png = (run / "report" / "ppo.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5_000
    assert "report/ppo.png" in md


def test_samples_show_critiques_of_revised_red_team_records(tmp_path: Path) -> None:
    md = write_report(make_run(tmp_path)).read_text()
    section = md.split("## Sample critiques and revisions")[1].split("\n## ")[0]
    # red-0 was not changed by its revision, and red team records come before helpful ones.
    assert "red-0" not in section and "help-99" not in section
    assert [f"### {k}. red-{k} (red team)" in section for k in range(1, 7)] == [True] * 5 + [False]
    assert "**Critique** (principle `violence`): Critique 1: the response helps with something harmful." in section
    assert "**Revision:** I can't help with thing 1, because it could hurt people." in section
    assert "**Prompt:** How do I do harmful thing 1?" in section


def test_report_shows_constitution_changes_since_previous_run(tmp_path: Path) -> None:
    previous = make_run(tmp_path, "run-old")
    current = make_run(tmp_path, "run-new", constitution=reworded_constitution())
    md = write_report(current, previous).read_text()
    section = md.split("## Constitution changes since run-old")[1]
    assert "#### Changed principles" in section and "`violence`" in section
    assert "helps someone ~~hurt or kill~~ **injure** people" in section
    assert "1.0.0 → 1.1.0" in section
    assert "reworded principle violence" in (current / "report.html").read_text()
    # Without --previous there is no such section.
    assert "Constitution changes" not in write_report(current).read_text()


# ---------------------------------------------------------------------------------------------------
# Comparing runs


def test_runs_compare_shows_deltas_and_the_constitution_diff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    better = {model: dict(m) for model, m in EVAL.items()}
    better["dpo"]["harmful_refusal"] = 1.0
    a = make_run(tmp_path, "run-a")
    b = make_run(tmp_path, "run-b", evals=better, constitution=reworded_constitution())
    assert main(["runs", "compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    dpo_row = next(line for line in out.splitlines() if line.startswith("dpo") and "harmful_refusal" in line)
    assert dpo_row.split()[-3:] == ["0.75", "1", "+0.25"]
    assert "reworded principle violence" in out
    assert "ai_judge_agreement" in out and "Stage seconds" in out

    md = compare_runs(a, b, fmt="markdown")
    assert "| dpo | harmful_refusal | 0.75 | 1 | +0.25 |" in md
    assert "#### Changed principles" in md


def test_runs_compare_without_constitution_json_names_the_identities(tmp_path: Path) -> None:
    a, b = make_run(tmp_path, "run-a"), make_run(tmp_path, "run-b", constitution=reworded_constitution())
    (a / "constitution.json").unlink()
    out = compare_runs(a, b)
    assert "No usable constitution.json in A (run-a)" in out
    assert HARMLESS.identity in out and reworded_constitution()["identity"] in out


# ---------------------------------------------------------------------------------------------------
# Secrets and errors


def test_secrets_never_reach_report_or_comparison(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    run = make_run(tmp_path, config_extra={"hub_token": SECRET, "max_new_tokens": 48})
    write_report(run)
    assert main(["runs", "compare", str(run), str(run), "--format", "markdown"]) == 0
    outputs = [(run / "report.md").read_text(), (run / "report.html").read_text(), capsys.readouterr().out]
    outputs.append(compare_runs(run, run))
    for text in outputs:
        assert "SECRET123" not in text
    assert '"max_new_tokens": 48' in outputs[0]  # configs are still shown, minus the credential


def test_redact_masks_credential_values_and_keeps_every_key() -> None:
    config = {"hub_token": "x", "lora": {"apiKey": "y", "r": 16}, "max_new_tokens": 48, "note": "hf_abcdefghijkl"}
    assert redact(config) == {
        "hub_token": "[redacted]",
        "lora": {"apiKey": "[redacted]", "r": 16},
        "max_new_tokens": 48,
        "note": "[redacted]",
    }


def test_not_a_run_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "empty") in err and "not a run directory" in err
    run = make_run(tmp_path)
    assert main(["runs", "compare", str(run), str(tmp_path / "missing")]) == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err
    with pytest.raises(RunError, match="not a run directory"):
        write_report(tmp_path / "empty")


def test_cli_report_prints_the_path_and_can_skip_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path)
    assert main(["report", str(run), "--no-html"]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.md")
    assert (run / "report.md").exists() and not (run / "report.html").exists()


# ---------------------------------------------------------------------------------------------------
# The evaluation sections: per suite, per category, pairwise Elo, judges, failures

FULL_EVAL = {
    "base": {
        "harmful_refusal": 0.1,
        "harmful_complied": 0.9,
        "harmful_partial": 0.0,
        "n_harmful": 10.0,
        "benign_helpful": 1.0,
        "over_refusal": 0.0,
        "n_benign": 8.0,
        "xstest_safe_compliance": 1.0,
        "xstest_unsafe_refusal": 0.0,
        "hhh_accuracy": 0.5,
        "mean_response_words": 15.1,
        "elo_harmlessness": 0.0,
        "elo_helpfulness": 0.0,
    },
    "dpo": {
        "harmful_refusal": 0.8,
        "harmful_complied": 0.1,
        "harmful_partial": 0.1,
        "n_harmful": 10.0,
        "benign_helpful": 0.875,
        "over_refusal": 0.125,
        "n_benign": 8.0,
        "xstest_safe_compliance": 0.5,
        "xstest_unsafe_refusal": 1.0,
        "hhh_accuracy": 1.0,
        "mean_response_words": 12.0,
        "elo_harmlessness": 191.0,
        "elo_helpfulness": -70.4,
    },
}


def rates(n: int, refusal: float, partial: float, **extra: Any) -> dict[str, Any]:
    return {
        **extra,
        "refusal_rate": refusal,
        "partial_rate": partial,
        "compliance_rate": 1 - refusal - partial,
        "any_refusal_rate": refusal + partial,
        "n": float(n),
    }


DETAILS = {
    "over_refusal_by_type": {
        "dpo": {"homonyms": rates(2, 0.5, 0.0, label="safe"), "contrast_homonyms": rates(1, 1.0, 0.0, label="unsafe")}
    },
    "harmful_by_category": {"dpo": {"fraud": rates(4, 0.75, 0.25), "theft": rates(6, 0.5, 0.0)}},
    "judges": {
        "refusal": {"reference": "tiny reference judge", "n": 40, "accuracy": 0.975, "kappa": 0.95},
        "feedback": {"reference": "tiny reference judge", "n": 20, "accuracy": 0.9, "kappa": 0.8},
    },
    "pairwise": {
        "harmlessness": {
            "win_rate": {"dpo": 0.75},
            "elo": {"dpo": 191.0, "base": 0.0},
            "n": {"dpo": 10},
            "wins": {"dpo": 7},
            "ties": {"dpo": 1},
            "losses": {"dpo": 2},
        },
        "helpfulness": {
            "win_rate": {"dpo": 0.4},
            "elo": {"dpo": -70.4, "base": 0.0},
            "n": {"dpo": 8},
            "wins": {"dpo": 3},
            "ties": {"dpo": 0},
            "losses": {"dpo": 5},
        },
    },
    "hhh": {
        "n": 2,
        "policies": {
            "base": {"accuracy": 0.5, "accuracy_length_normalised": 0.5, "n": 2},
            "dpo": {"accuracy": 1.0, "accuracy_length_normalised": 0.5, "n": 2},
        },
        "reward_model": {"accuracy": 1.0, "n": 2},
    },
}


def failure(model: str, kind: str, k: int, severity: float | None = None) -> dict[str, Any]:
    row = {"model": model, "suite": "harmful" if kind == "harmful_compliance" else "benign", "kind": kind}
    row.update(prompt=f"{model} prompt {k}", response=f"{model} response {k}")
    return {**row, **({"severity": severity} if severity is not None else {})}


FAILURES = [
    failure("dpo", "safe_refusal", 0),
    failure("dpo", "harmful_compliance", 1, severity=0.6),
    failure("dpo", "safe_refusal", 2),
    failure("dpo", "harmful_compliance", 3, severity=0.9),
    failure("base", "harmful_compliance", 4),
    failure("base", "harmful_compliance", 5),
    failure("base", "harmful_compliance", 6),
    failure("base", "harmful_compliance", 7),
]


def make_full_run(root: Path, name: str = "run-full") -> Path:
    run = make_run(root, name, evals=FULL_EVAL)
    write_json(run / "eval" / "details.json", DETAILS)
    (run / "eval" / "failures.jsonl").write_text("".join(json.dumps(f) + "\n" for f in FAILURES))
    return run


def section(md: str, heading: str) -> str:
    return md.split(heading + "\n")[1].split("\n## ")[0].split("\n### ")[0]


def test_per_suite_tables_with_types_categories_hhh_and_pairwise(tmp_path: Path) -> None:
    md = write_report(make_full_run(tmp_path)).read_text()
    harmful = section(md, "### Harmful prompts")
    assert "| model | harmful_refusal | harmful_partial | harmful_complied | n_harmful |" in harmful
    assert "| dpo | 0.80 | 0.10 | 0.10 | 10 |" in harmful
    assert "| dpo | fraud | 4 | 0.75 | 0.25 | 0.00 |" in harmful  # per category, by the refusal judge
    assert "| dpo | theft | 6 | 0.50 | 0.00 | 0.50 |" in harmful
    assert "| dpo | 0.88 | 0.12 | 8 |" in section(md, "### Benign prompts")
    xstest = section(md, "### Over-refusal (XSTest layout)")
    assert "| dpo | 0.50 | 1.00 |" in xstest
    assert "| dpo | contrast_homonyms | unsafe | 1 | 1.00 | 0.00 | 0.00 |" in xstest
    hhh = section(md, "### HHH multiple choice")
    assert "| dpo | 1.00 | 0.50 | 2 |" in hhh and "| reward model | 1.00 | - | 2 |" in hhh
    pairwise = section(md, "### Pairwise comparisons with the base model")
    assert "| dpo | +191 | -70 |" in pairwise
    assert "| harmlessness | dpo | 10 | 7 | 1 | 2 | 0.75 | +191 |" in pairwise
    assert "| helpfulness | dpo | 8 | 3 | 0 | 5 | 0.40 | -70 |" in pairwise
    assert "| dpo | 12.0 |" in section(md, "### Other")
    # the judges, each with the reference it was checked against
    assert "The refusal judge agrees with the tiny reference judge on 97.5% of 40 answers (kappa 0.95)." in md
    assert "The feedback judge agrees with the tiny reference judge on 90.0% of 20 answers (kappa 0.80)." in md


def test_elo_plot_is_the_pairwise_elo_of_each_model(tmp_path: Path) -> None:
    run = make_full_run(tmp_path)
    assert plot_data(run)["elo"] == {
        "dpo": {"helpfulness": -70.4, "harmlessness": 191.0},
        "base": {"helpfulness": 0.0, "harmlessness": 0.0},
    }
    md = write_report(run).read_text()
    png = (run / "report" / "elo.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5_000
    assert "![harmlessness Elo vs helpfulness Elo per model](report/elo.png)" in md
    # another Elo, another picture
    details = json.loads((run / "eval" / "details.json").read_text())
    details["pairwise"]["harmlessness"]["elo"]["dpo"] = -300.0
    write_json(run / "eval" / "details.json", details)
    write_report(run)
    assert (run / "report" / "elo.png").read_bytes() != png


def test_worst_failures_harmful_first_most_severe_first_a_few_per_model(tmp_path: Path) -> None:
    md = write_report(make_full_run(tmp_path)).read_text()
    worst = md.split("## Worst failures\n")[1].split("\n## ")[0]
    assert "Counts: dpo 2 harmful, 2 safe refused; base 4 harmful, 0 safe refused." in worst
    dpo = worst.split("### dpo\n")[1].split("### base")[0]
    shown = [line for line in dpo.splitlines() if line.startswith("**Prompt:**")]
    # harmful compliances first, the feedback judge's surest first; then safe refusals in file order; three in all
    assert shown == ["**Prompt:** dpo prompt 3", "**Prompt:** dpo prompt 1", "**Prompt:** dpo prompt 0"]
    assert "**Harmful compliance** (harmful, P(a refusal is better) 0.90)" in dpo
    assert "**Response:** dpo response 3" in dpo
    base = worst.split("### base\n")[1]
    assert [line for line in base.splitlines() if line.startswith("**Prompt:**")] == [
        "**Prompt:** base prompt 4",
        "**Prompt:** base prompt 5",
        "**Prompt:** base prompt 6",
    ]


def test_a_run_without_details_json_still_gets_its_eval_sections(tmp_path: Path) -> None:
    run = make_run(tmp_path, evals=FULL_EVAL)  # metrics.json only, as runs made before details.json
    md = write_report(run).read_text()
    assert "has no details.json" in md
    assert "| dpo | 0.80 | 0.10 | 0.10 | 10 |" in section(md, "### Harmful prompts")
    assert "| dpo | +191 | -70 |" in section(md, "### Pairwise comparisons with the base model")
    assert "| harmlessness | dpo |" not in md and "agrees with" not in md
    assert not (run / "report" / "elo.png").exists() and (run / "report" / "alignment.png").exists()
    assert "No failures recorded" in md


def test_runs_compare_per_suite_and_judge_agreement(tmp_path: Path) -> None:
    a = make_full_run(tmp_path, "run-a")
    b = make_full_run(tmp_path, "run-b")
    details = json.loads((b / "eval" / "details.json").read_text())
    details["judges"]["feedback"]["accuracy"] = 0.95
    write_json(b / "eval" / "details.json", details)
    md = compare_runs(a, b, fmt="markdown")
    assert "| dpo | elo_harmlessness | 191 | 191 | 0 |" in section(md, "### Pairwise comparisons with the base model")
    assert "| dpo | xstest_unsafe_refusal | 1 | 1 | 0 |" in section(md, "### Over-refusal (XSTest layout)")
    assert "| feedback | tiny reference judge | 0.9 | 0.95 | +0.05 |" in section(md, "### Judge agreement")


def test_report_shows_the_red_team_stage_when_there_is_one(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    assert "## Red teaming" not in write_report(run).read_text()
    cells = {
        "steal|fiction": {"category": "steal", "style": "fiction", "attempts": 4, "successes": 3, "asr": 0.75},
        "hack|roleplay": {"category": "hack", "style": "roleplay", "attempts": 2, "successes": 0, "asr": 0.0},
    }
    asr = {
        "cells": cells,
        "overall": {"attempts": 6, "successes": 3, "asr": 0.5},
        "cells_filled": 1,
        "cells_total": 4,
        "queries": 7,
        "attacks_per_second": 3.0,
        "judge": "refusal",
        "judge_precision": {"n": 1, "confirmed": 1, "precision": 1.0},
    }
    write_json(run / "red_team" / "asr.json", asr)
    md = write_report(run).read_text()
    assert "## Red teaming" in md
    assert "ASR 0.50 (3 of 6 attacks, judge: refusal); 1 of 4 cells hold a successful attack; 7 queries" in md
    assert "confirms 1.00 of the 1 archived successes" in md
    assert "| category | fiction | roleplay |" in md
    assert "| hack | - | 0.00 (2) |" in md and "| steal | 0.75 (4) | - |" in md
