"""The numerics of PPO as pure tensor functions, each unit-tested against values worked out by hand.

Shapes: ``[batch, response_tokens]`` with a ``mask`` that is 1 on response tokens (up to and including
EOS) and 0 on the padding after them. Names follow Huang et al. 2024, "The N implementation details of
RLHF with PPO".
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = (((x - mean) ** 2) * mask).sum() / n.clamp(min=1)
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Zero mean, unit variance over the masked entries; ``shift_mean=False`` keeps the mean (for rewards,
    whose sign carries meaning)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def kl_per_token(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Two estimates of KL(policy || reference) per sampled token.

    k1 = log p - log q is unbiased and what the reward penalty uses (its sum over a response is the
    sequence log-ratio); k3 = (r - 1) - log r with r = q/p is also unbiased, never negative and has lower
    variance, so it is the one to watch in logs (Schulman 2020, "Approximating KL divergence").
    """
    log_ratio = (logprobs - ref_logprobs) * mask
    k3 = (torch.expm1(-log_ratio) + log_ratio) * mask
    return log_ratio, k3


def shaped_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token rewards: -beta * KL on every token, plus the sequence's score on its last token."""
    rewards = -kl_coef * kl * mask
    last = mask.sum(1).long().clamp(min=1) - 1
    rewards[torch.arange(len(scores), device=scores.device), last] += scores
    return rewards


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over each response; returns (advantages, returns).

    The value after the last token is 0 (the episode ends), and padding contributes nothing.
    """
    mask = mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cliprange: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """The clipped surrogate objective (Schulman et al. 2017), as a loss to minimise.

    Also returns the share of tokens where clipping was active and the approximate KL between the
    policy before and after this update, the two signs that the step size is right.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    stats = {
        "clipfrac": masked_mean((clipped > unclipped).float(), mask),
        "approx_kl": 0.5 * masked_mean(log_ratio**2, mask),
    }
    return loss, stats


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, cliprange_value: float
) -> tuple[Tensor, Tensor]:
    """Clipped value loss: the larger of the squared errors of the new and of the clipped value estimate."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    return loss, masked_mean((clipped_error > unclipped_error).float(), mask)


def entropy_from_logits(logits: Tensor) -> Tensor:
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var(returns - values) / Var(returns): 1 is a perfect critic, 0 no better than a constant."""
    var_returns = masked_var(returns, mask)
    return 1 - masked_var(returns - values, mask) / var_returns.clamp(min=1e-8)


class KLController:
    """A fixed KL coefficient, or the adaptive controller of Ziegler et al. 2019.

    Adaptive: beta is multiplied by 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon after each batch of
    n episodes, so it rises while the policy drifts past the target and falls while it stays within it.
    """

    def __init__(self, value: float, adaptive: bool = False, target: float = 6.0, horizon: int = 10_000) -> None:
        self.value, self.adaptive, self.target, self.horizon = value, adaptive, target, horizon

    def update(self, kl: float, n_episodes: int) -> None:
        if not self.adaptive:
            return
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_episodes / self.horizon
