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
