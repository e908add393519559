"""scripts/bench_ppo.py's pure parts: the resolved PPO config and the summary of one side's steps."""

import importlib.util
from pathlib import Path

import pytest

from align.config import ConfigError

spec = importlib.util.spec_from_file_location("bench_ppo", Path(__file__).parents[1] / "scripts" / "bench_ppo.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_bench_config_applies_bench_values_then_overrides():
    cfg = bench.bench_config(["--ppo.learning_rate=3e-4", "ppo_epochs=2"])
    assert cfg["learning_rate"] == 3e-4 and cfg["ppo_epochs"] == 2
    assert cfg["rollout_batch_size"] == cfg["mini_batch_size"] == bench.BENCH["rollout_batch_size"]
    assert cfg["normalize_reward"] is False and cfg["save_steps"] == 0
    assert cfg["vf_coef"] == 0.1  # not in BENCH: PPOStageConfig's default
    with pytest.raises(ConfigError, match="mini_batch_size"):
        bench.bench_config(["--ppo.mini_batch_size=5"])


def test_summary_skips_the_first_step_time_and_averages_k_steps_at_each_end():
    steps = [{"seconds": s, "reward_mean": float(r)} for s, r in zip([9.0, 1.0, 2.0, 4.0] * 2, range(8))]
    s = bench.summarise({"steps": steps, "peak_rss_mib": 100.0})
    assert s["median_s"] == 2.0  # of 1, 2, 4, 9, 1, 2, 4
    assert s["mean_s"] == pytest.approx(23 / 7)
    assert s["k"] == 2 and s["gain"] == pytest.approx((6 + 7) / 2 - (0 + 1) / 2)
    assert (s["reward_first"], s["reward_last"], s["n"]) == (0.0, 7.0, 8)
    tokens = [{**step, "pass_tokens": t} for step, t in zip(steps, [10, 30, 20, 40, 50, 60, 70, 80])]
    assert bench.summarise({"steps": tokens, "peak_rss_mib": 100.0})["pass_tokens"] == 45  # median of all eight


def test_one_column_per_critic_then_trl():
    assert bench.side_names(None, ["full"]) == ["align", "trl"]  # as before: one align side
    assert bench.side_names(None, ["full", "shared"]) == ["align[full]", "align[shared]", "trl"]
    assert bench.side_names("align", ["full", "lora", "shared"]) == ["align[full]", "align[lora]", "align[shared]"]
    assert bench.side_names("trl", ["shared"]) == ["trl"]


def test_table_compares_each_align_side_with_trl(capsys):
    row = {"mean_s": 1.0, "reward_first": 0.0, "reward_last": 0.0, "gain": 0.0, "k": 1, "n": 3}
    bench.print_table(
        {
            "align[full]": {**row, "median_s": 2.0, "peak_rss_mib": 600.0, "pass_tokens": 1500.0},
            "align[shared]": {**row, "median_s": 1.0, "peak_rss_mib": 500.0, "pass_tokens": 1600.0},
            "trl": {**row, "median_s": 3.0, "mean_s": 3.0, "peak_rss_mib": 800.0, "pass_tokens": 1584.0},
        }
    )
    out = capsys.readouterr().out
    assert "| | align[full] | align[shared] | trl |" in out
    assert "| tokens per forward pass over a rollout (median) | 1500 | 1600 | 1584 |" in out
    # 3/2, 3/1, 600/800, 1584/1500 = 1.056
    assert "align[full] vs TRL: 1.50x faster (median), 3.00x (mean); peak RSS 0.75x; TRL's passes read 1.06x" in out
    # 500/800 = 0.625, 1584/1600 = 0.99
    assert "align[shared] vs TRL: 3.00x faster (median), 3.00x (mean); peak RSS 0.62x; TRL's passes read 0.99x" in out
