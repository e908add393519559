"""align's PPO: every piece of the math against values worked out by hand, then learning, LoRA and resume."""

import json
import math

import pytest
import torch
from transformers import Qwen2ForSequenceClassification

from align.config import LoraSettings, PPOStageConfig
from align.rl.losses import (
    KLController,
    explained_variance,
    gae,
    kl_per_token,
    masked_whiten,
    policy_loss,
    shaped_rewards,
    value_loss,
)
from align.rl.ppo import PPO, response_mask, token_logprobs, train_ppo
from align.tiny.model import build_model, build_tokenizer

T = torch.tensor


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread


# ---- the math by hand --------------------------------------------------------------------------------------


def test_gae_on_a_short_trajectory():
    # gamma 1, lambda 0.95; rewards (0, 0, 1), values (0.5, 0.6, 0.7), the value after the end is 0:
    # deltas 0.3 (=1-0.7), 0.1 (=0.7-0.6), 0.1 (=0.6-0.5); A2 = 0.3, A1 = 0.1 + 0.95*0.3 = 0.385,
    # A0 = 0.1 + 0.95*0.385 = 0.46575; returns = A + V.
    adv, ret = gae(T([[0.0, 0.0, 1.0]]), T([[0.5, 0.6, 0.7]]), T([[1, 1, 1]]), gamma=1.0, lam=0.95)
    assert adv.tolist()[0] == pytest.approx([0.46575, 0.385, 0.3])
    assert ret.tolist()[0] == pytest.approx([0.96575, 0.985, 1.0])


def test_gae_ignores_padding_and_discounts():
    # mask (1, 1, 0): the padded value 9 and reward 5 must not leak in. gamma 0.5, lambda 1:
    # delta1 = 2 - 1 = 1 -> A1 = 1; delta0 = 0 + 0.5*1 - 1 = -0.5 -> A0 = -0.5 + 0.5*1 = 0.
    adv, ret = gae(T([[0.0, 2.0, 5.0]]), T([[1.0, 1.0, 9.0]]), T([[1, 1, 0]]), gamma=0.5, lam=1.0)
    assert adv.tolist()[0] == pytest.approx([0.0, 1.0, 0.0])
    assert ret.tolist()[0] == pytest.approx([1.0, 2.0, 0.0])


def test_whitening_over_masked_entries():
    # (1, 2, 3, 4): mean 2.5, unbiased variance 5/3 -> (x - 2.5) / 1.290994
    assert masked_whiten(T([[1.0, 2.0, 3.0, 4.0]]), T([[1, 1, 1, 1]])).tolist()[0] == pytest.approx(
        [-1.161895, -0.387298, 0.387298, 1.161895], abs=1e-5
    )
    # the masked 100 is excluded: (1, 3) has mean 2 and unbiased variance 2; the masked slot stays 0
    assert masked_whiten(T([[1.0, 3.0, 100.0]]), T([[1, 1, 0]])).tolist()[0] == pytest.approx(
        [-0.707107, 0.707107, 0.0], abs=1e-5
    )
    # shift_mean=False keeps the mean: (1, 3) -> 2 +- 0.707107
    assert masked_whiten(T([[1.0, 3.0]]), T([[1, 1]]), shift_mean=False).tolist()[0] == pytest.approx(
        [1.292893, 2.707107], abs=1e-5
    )


def test_kl_per_token_estimators():
    # log p - log q = (0.5, -1.0); k3 = expm1(-x) + x: e^-0.5 - 1 + 0.5 = 0.106531, e^1 - 1 - 1 = 0.718282
    k1, k3 = kl_per_token(T([[-1.0, -2.0, -3.0]]), T([[-1.5, -1.0, 0.0]]), T([[1, 1, 0]]))
    assert k1.tolist()[0] == pytest.approx([0.5, -1.0, 0.0])
    assert k3.tolist()[0] == pytest.approx([0.106531, 0.718282, 0.0], abs=1e-6)


def test_shaped_rewards_put_the_score_on_the_last_real_token():
    # beta 0.1: -0.1 * (0.5, -1.0) = (-0.05, 0.1); score 2 lands on token 2 of 3 (the third is padding)
    r = shaped_rewards(T([2.0]), T([[0.5, -1.0, 0.3]]), T([[1, 1, 0]]), kl_coef=0.1)
    assert r.tolist()[0] == pytest.approx([-0.05, 2.1, 0.0])


def test_clipped_policy_loss_both_branches():
    old = T([[0.0, 0.0, 0.0]])
    new = torch.log(T([[1.5, 0.5, 0.5]]))  # ratios 1.5, 0.5, 0.5
    adv = T([[1.0, 1.0, -1.0]])
    # per token max(-A r, -A clip(r, 0.8, 1.2)):
    #   r=1.5, A=+1: max(-1.5, -1.2) = -1.2 (clipped);   r=0.5, A=+1: max(-0.5, -0.8) = -0.5 (not clipped)
    #   r=0.5, A=-1: max(0.5, 0.8) = 0.8 (clipped)  -> mean (-1.2 - 0.5 + 0.8) / 3 = -0.3
    loss, stats = policy_loss(new, old, adv, T([[1, 1, 1]]), cliprange=0.2)
    assert loss.item() == pytest.approx(-0.3)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)
    # approx KL = mean(0.5 * log(r)^2)
    expected = (0.5 * math.log(1.5) ** 2 + 2 * 0.5 * math.log(0.5) ** 2) / 3
    assert stats["approx_kl"].item() == pytest.approx(expected)


def test_clipped_value_loss_both_branches():
    # old 1, new 1.5, return 2, clip 0.2: clipped value 1.2; errors 0.25 (new) and 0.64 (clipped) -> 0.5*0.64
    loss, clipfrac = value_loss(T([[1.5]]), T([[1.0]]), T([[2.0]]), T([[1]]), cliprange_value=0.2)
    assert loss.item() == pytest.approx(0.32) and clipfrac.item() == 1.0
    # new 1.1 is inside the clip range: both errors 0.81 -> 0.405, no clipping
    loss, clipfrac = value_loss(T([[1.1]]), T([[1.0]]), T([[2.0]]), T([[1]]), cliprange_value=0.2)
    assert loss.item() == pytest.approx(0.405) and clipfrac.item() == 0.0


def test_adaptive_kl_controller():
    ctl = KLController(0.1, adaptive=True, target=6.0, horizon=10_000)
    ctl.update(9.0, 64)  # error clip(9/6 - 1) = 0.2 -> x (1 + 0.2 * 64 / 10000)
    assert ctl.value == pytest.approx(0.1 * 1.00128)
    ctl.update(3.0, 100)  # error -0.5 -> clipped to -0.2
    assert ctl.value == pytest.approx(0.1 * 1.00128 * (1 - 0.2 * 100 / 10_000))
    fixed = KLController(0.1)
    fixed.update(100.0, 64)
    assert fixed.value == 0.1


def test_response_mask_and_token_logprobs():
    mask, has_eos = response_mask(T([[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]), eos_id=2)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert has_eos.tolist() == [True, False, True]
    logits = T([[[0.0, math.log(3.0)]]])  # p = (1/4, 3/4)
    assert token_logprobs(logits, T([[1]]), 1.0).item() == pytest.approx(math.log(0.75))
    # temperature 2 halves the logits: p1 = sqrt(3) / (1 + sqrt(3))
    assert token_logprobs(logits, T([[1]]), 2.0).item() == pytest.approx(math.log(3**0.5 / (1 + 3**0.5)))


def test_explained_variance():
    returns, mask = T([[1.0, 2.0, 3.0]]), T([[1, 1, 1]])
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask).item() == pytest.approx(0.0)


# ---- learning on a synthetic reward -----------------------------------------------------------------------

WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "yes", "no"]


def tiny_world(seed=0):
    tok = build_tokenizer([f"say {a} {b} {c}" for a in WORDS for b in WORDS for c in WORDS[:3]], 300)
    policy = build_model(tok, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
    config = policy.config
    config.num_labels = 1
    torch.manual_seed(seed)
    value = Qwen2ForSequenceClassification(config)
    prompts = [[{"role": "user", "content": f"say {a} {b}"}] for a in WORDS for b in WORDS]
    return tok, policy, value, prompts


def target_share(tok):
    """Reward = share of the answer's tokens that are single lowercase letters: easy to check by hand, and
    about 1 in 12 tokens of a random model's answers, so there is signal from the first step."""
    targets = {i for i in range(len(tok)) if len(s := tok.decode([i])) == 1 and s.isascii() and s.islower()}

    def reward(conversations, answers):
        ids = [tok(text=a, add_special_tokens=False).input_ids for a in answers]
        return [sum(t in targets for t in x) / max(len(x), 1) for x in ids]

    return reward


def fast_cfg(**overrides):
    settings = dict(
        learning_rate=3e-3,
        steps=30,
        rollout_batch_size=32,
        mini_batch_size=16,
        ppo_epochs=2,
        max_new_tokens=8,
        temperature=1.0,
        kl_coef=0.01,
        normalize_reward=False,
        missing_eos_penalty=None,
        save_steps=0,
        logging_steps=0,
    )
    return PPOStageConfig(**{**settings, **overrides})


def test_ppo_learns_a_synthetic_reward_with_finite_kl(tmp_path):
    tok, policy, value, prompts = tiny_world()
    metrics = train_ppo(policy, tok, target_share(tok), prompts, fast_cfg(), str(tmp_path), seed=0, value_model=value)
    history = json.loads((tmp_path / "log_history.json").read_text())
    assert len(history) == 30 and metrics["steps"] == 30
    assert metrics["reward_end"] > metrics["reward_start"] + 0.3, metrics
    assert all(math.isfinite(row["kl"]) and math.isfinite(row["value_loss"]) for row in history)
    assert history[-1]["kl"] > 0  # the policy moved away from the reference, and the KL sees it
    for key in ("reward_std", "entropy", "clipfrac", "approx_kl", "explained_variance", "response_length"):
        assert key in history[0]
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "tokenizer.json").exists()


def test_first_update_starts_from_ratio_one_and_kl_zero(tmp_path):
    """Before any update the policy is the reference and the rollout log-probs are the training ones."""
    tok, policy, value, prompts = tiny_world()
    ppo = PPO(
        policy, tok, target_share(tok), prompts, fast_cfg(steps=1, ppo_epochs=1), tmp_path, seed=0, value_model=value
    )
    batch = ppo.rollout(0)
    assert batch["ref_logprobs"].sub(batch["logprobs"]).abs().max().item() < 1e-5
    ppo.advantages(batch)
    mb = {k: v for k, v in batch.items()}
    _, stats = ppo._loss(mb, 0)
    assert stats["approx_kl"] < 1e-9 and stats["clipfrac"] == 0.0


def test_reward_model_scores_through_its_chat_template_and_lora_keeps_one_copy(tmp_path):
    tok, policy, value, prompts = tiny_world()
    reward_model = value  # any one-logit classifier
    reward_model.config.pad_token_id = tok.pad_token_id
    cfg = fast_cfg(steps=2, lora=LoraSettings(enabled=True, r=4, alpha=8, dropout=0.0))
    ppo = PPO(policy, tok, reward_model, prompts, cfg, tmp_path, seed=0)
    assert ppo.ref_model is None and ppo.lora  # the reference is the policy with the adapter off
    conversation = prompts[0]
    text = tok.apply_chat_template(
        [*conversation, {"role": "assistant", "content": "yes yes"}], tokenize=True, return_dict=True
    )["input_ids"]
    expected = reward_model(input_ids=T([text])).logits[0, 0].item()
    answer = tok(text="yes yes<|im_end|>", add_special_tokens=False).input_ids
    got = ppo.score([conversation], T([answer]), torch.ones(1, len(answer), dtype=torch.long))
    assert got.item() == pytest.approx(expected, abs=1e-5)
    ppo.train()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == ["Qwen2ForCausalLM"]  # merged: a plain model, no adapter files
    assert not (tmp_path / "adapter_config.json").exists()


def test_resume_from_the_newest_valid_checkpoint_equals_an_uninterrupted_run(tmp_path):
    cfg = fast_cfg(steps=6, save_steps=2)
    tok, policy, value, prompts = tiny_world()
    full = train_ppo(policy, tok, target_share(tok), prompts, cfg, str(tmp_path / "full"), seed=0, value_model=value)

    # An interrupted run: 4 steps done, checkpoints at 2 and 4, and the newest one broken mid-write.
    tok, policy, value, prompts = tiny_world()
    ppo = PPO(policy, tok, target_share(tok), prompts, cfg, tmp_path / "cut", seed=0, value_model=value)
    for _ in range(4):
        ppo.train_step()
    newest = tmp_path / "cut" / "checkpoints" / "step-000004"
    (newest / "optimizer.pt").write_bytes(b"truncated")
    (tmp_path / "cut" / "checkpoints" / ".tmp-step-000006").mkdir()  # a save that never finished

    tok, policy, value, prompts = tiny_world()
    with pytest.warns(UserWarning, match="step-000004: skipping corrupt or partial checkpoint: optimizer.pt"):
        resumed = PPO(policy, tok, target_share(tok), prompts, cfg, tmp_path / "cut", seed=0, value_model=value)
    assert resumed.step == 2
    resumed.train()
    # Prompts and sampling are seeded by step, so the resumed run retraces the uninterrupted one.
    a = json.loads((tmp_path / "full" / "log_history.json").read_text())
    b = json.loads((tmp_path / "cut" / "log_history.json").read_text())
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["reward_mean"] for r in b[2:]] == pytest.approx([r["reward_mean"] for r in a[2:]], abs=1e-5)
    assert full["steps"] == 6
    kept = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert kept == ["step-000002", "step-000004"]  # the last two; the broken one was replaced


def test_bad_input_is_named(tmp_path):
    tok, policy, value, prompts = tiny_world()
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        PPO(
            policy,
            tok,
            target_share(tok),
            [prompts[0], [{"role": "user", "content": "  "}]],
            fast_cfg(),
            tmp_path,
            seed=0,
            value_model=value,
        )
    with pytest.raises(ValueError, match="pass a value_model"):
        PPO(policy, tok, target_share(tok), prompts, fast_cfg(), tmp_path, seed=0)
    with pytest.raises(ValueError, match="no usable prompts .*3 longer"):
        PPO(
            policy,
            tok,
            target_share(tok),
            prompts[:3],
            fast_cfg(max_prompt_length=2),
            tmp_path,
            seed=0,
            value_model=value,
        )


def test_nan_loss_stops_with_the_step_number_and_the_last_checkpoint(tmp_path):
    """A reward that turns NaN at step 3: the stage stops there, naming step 3 and the checkpoint of step 2."""
    from align.train.errors import TrainingDiverged

    tok, policy, value, prompts = tiny_world()
    calls = []

    def reward(conversations, answers):
        calls.append(1)
        return [float("nan") if len(calls) == 3 else 1.0] * len(answers)

    out = tmp_path / "ppo.partial"
    with pytest.raises(
        TrainingDiverged, match=r"^ppo: loss is NaN or infinite at step 3 .*checkpoint is .*step-000002"
    ):
        train_ppo(policy, tok, reward, prompts, fast_cfg(steps=4, save_steps=2), str(out), seed=0, value_model=value)
