"""Reinforcement learning from the reward model: align's own PPO (TRL removed its PPOTrainer in 2026)."""

from align.rl.ppo import train_ppo

__all__ = ["train_ppo"]
