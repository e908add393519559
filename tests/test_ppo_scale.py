"""PPO that fits: the three critics (full, LoRA on the reward trunk, head on the policy trunk), gradient
checkpointing, checkpoints of trainable parameters only, and the dtype a PPO model loads in."""

import pytest
import torch
from test_ppo import fast_cfg, target_share, tiny_world
from transformers import Qwen2ForSequenceClassification

from align.config import ConfigError, LoraSettings, PPOStageConfig
from align.rl.ppo import PPO, LoraCritic, checkpointing_active, trainable_state

# The tiny world's model: hidden 32, 2 layers, 2 query heads and 1 KV head of 16, MLP 64.
HIDDEN, LAYERS = 32, 2
# (in, out) of every Linear in one decoder layer: q, k, v, o, gate, up, down.
LINEARS = [(32, 32), (32, 16), (32, 16), (32, 32), (32, 64), (32, 64), (64, 32)]
RANK = 4
# A LoRA pair on an (in, out) Linear is A: r x in plus B: out x r.
LORA_PARAMS = LAYERS * sum(RANK * (i + o) for i, o in LINEARS)  # 2 * 4 * (64+48+48+64+96+96+96) = 4096


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread


def small_cfg(value_model, **overrides):
    settings = dict(
        steps=2,
        rollout_batch_size=8,
        mini_batch_size=8,
        ppo_epochs=1,
        max_new_tokens=6,
        value_model=value_model,
        value_lora=LoraSettings(enabled=True, r=RANK, alpha=8, dropout=0.0),
    )
    return fast_cfg(**{**settings, **overrides})


def world_with_reward_model():
    """The tiny policy and a one-logit classifier as the reward model (seeded apart from the policy)."""
    tok, policy, _, prompts = tiny_world()
    config = policy.config
    config.num_labels = 1
    config.pad_token_id = tok.pad_token_id
    torch.manual_seed(1)
    reward_model = Qwen2ForSequenceClassification(config)
    with torch.no_grad():
        reward_model.score.weight.normal_(0, 1.0)  # a reward with a spread, so the critic has something to fit
    return tok, policy, reward_model, prompts


def n_trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def make_ppo(value_model, out, **overrides):
    tok, policy, reward_model, prompts = world_with_reward_model()
    ppo = PPO(policy, tok, reward_model, prompts, small_cfg(value_model, **overrides), out, seed=0)
    return ppo, policy, reward_model


@pytest.mark.parametrize("option", ["full", "lora", "shared"])
def test_trainable_parameter_counts_of_each_critic(tmp_path, option):
    ppo, policy, reward_model = make_ppo(option, tmp_path)
    policy_params = sum(p.numel() for p in policy.parameters())
    reward_params = sum(p.numel() for n, p in reward_model.named_parameters() if "lora_" not in n)  # base only
    critic = {
        "full": reward_params,  # a whole trainable copy of the reward model
        "lora": LORA_PARAMS + HIDDEN,  # the adapter, and the head's 1 x 32 weight (Qwen2's score has no bias)
        "shared": HIDDEN + 1,  # Linear(32, 1) on the policy trunk
    }[option]
    assert n_trainable(ppo.module) == policy_params + critic
    if option == "lora":
        assert critic == 4128 and critic * 6 < reward_params  # far fewer than the full critic (28,096 here)
        # no second trunk: the critic's layers are the reward model's own
        assert ppo.module.value_model.trunk.get_base_model() is reward_model.model
    ppo.train()
    assert len(ppo.history) == 2 and all(torch.isfinite(torch.tensor(r["value_loss"])) for r in ppo.history)


def test_lora_critic_trains_its_adapter_and_head_and_leaves_the_reward_model_alone(tmp_path):
    tok, policy, reward_model, prompts = world_with_reward_model()
    before = {k: v.clone() for k, v in reward_model.state_dict().items()}
    conversation = prompts[:3]
    answer = tok(text="yes no<|im_end|>", add_special_tokens=False).input_ids
    responses, mask = torch.tensor([answer] * 3), torch.ones(3, len(answer), dtype=torch.long)
    ppo = PPO(policy, tok, reward_model, prompts, small_cfg("lora", steps=3), tmp_path, seed=0)
    critic = ppo.module.value_model
    assert isinstance(critic, LoraCritic)
    head_before = critic.score.weight.detach().clone()
    assert torch.equal(head_before, reward_model.score.weight)  # the value head starts as the reward head
    scores_before = ppo.score(conversation, responses, mask)
    ppo.train()
    # every base weight of the reward model is bit-for-bit what it was (LoRA wraps them as `base_layer`)
    after = {k.replace(".base_layer", ""): v for k, v in reward_model.state_dict().items() if "lora_" not in k}
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # and it still scores as before: the adapter is off while it reads the shared trunk
    assert torch.equal(ppo.score(conversation, responses, mask), scores_before)
    # while the critic did learn: its head moved and the adapter's B matrices left zero
    assert not torch.equal(critic.score.weight, head_before)
    lora_b = [p for n, p in critic.named_parameters() if "lora_B" in n]
    assert len(lora_b) == LAYERS * len(LINEARS) and all(p.abs().sum() > 0 for p in lora_b)
    assert not any(p.requires_grad for n, p in reward_model.named_parameters() if "lora_" not in n)


def test_shared_critic_takes_logits_and_values_from_one_trunk_pass(tmp_path):
    ppo, policy, _ = make_ppo("shared", tmp_path)
    calls = {"trunk": 0, "lm_head": 0}
    policy.model.register_forward_hook(lambda *a: calls.__setitem__("trunk", calls["trunk"] + 1))
    policy.lm_head.register_forward_hook(lambda *a: calls.__setitem__("lm_head", calls["lm_head"] + 1))
    batch = ppo.rollout(0)
    ppo.advantages(batch)
    calls.update(trunk=0, lm_head=0)
    loss, _ = ppo._loss(batch, 0)
    assert calls == {"trunk": 1, "lm_head": 1}  # one pass of the trunk, both heads on it
    loss.backward()
    head = ppo.module.value_head
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0  # the value loss reaches the head
    # values in one pass equal the critic alone (the rollout's path); logits equal the policy's own forward
    ids, attn, width = ppo._sequence(batch)
    with torch.no_grad():
        logits, values = ppo.module(ids, attn, width)
        assert torch.allclose(values, ppo.module.values(ids, attn, width))
        positions = (attn.cumsum(1) - 1).clamp(min=0)
        reference = policy(input_ids=ids, attention_mask=attn, position_ids=positions, logits_to_keep=width + 1)
        assert torch.allclose(logits, reference.logits[:, :-1], atol=1e-5)


def test_shared_critic_rollout_values_come_from_generation_and_equal_a_trunk_pass(tmp_path):
    ppo, policy, _ = make_ppo("shared", tmp_path)
    with torch.no_grad():
        ppo.module.value_head.weight.normal_(0, 1.0)  # a head that reads the states (zeros would hide a mismatch)
        ppo.module.value_head.bias.fill_(0.5)
    calls = {"trunk": 0}
    policy.model.register_forward_hook(lambda *a: calls.__setitem__("trunk", calls["trunk"] + 1))
    batch = ppo.rollout(0)
    width = batch["response"].shape[1]
    # generation: one prefill and one pass per further token; no separate trunk pass for the values
    assert calls["trunk"] <= width
    ids, attn, width = ppo._sequence(batch)
    with torch.no_grad():
        expected = ppo.module.values(ids, attn, width)
    mask = batch["mask"].bool()
    assert mask.sum() > len(mask)  # answers longer than one token, so later states are checked too
    assert torch.allclose(batch["values"][mask], expected[mask], atol=1e-5)


@pytest.mark.parametrize("option", ["full", "shared"])
def test_length_groups_give_the_loss_gradients_values_and_scores_of_one_pass(tmp_path, option):
    """Rows in groups of similar length, each cut to its own width and weighted by its tokens: the same numbers."""
    from align.rl.ppo import length_groups
    from align.rl.rollouts import TransformersRollouts

    class EndsEarly(TransformersRollouts):
        """Answers of 2 to 9 tokens (a random tiny model never samples EOS by itself)."""

        def generate(self, policy, query, query_mask, seed):
            responses, logprobs = super().generate(policy, query, query_mask, seed)
            responses[torch.arange(len(responses)), 1 + torch.arange(len(responses)) % 8] = self.eos_id
            return responses, logprobs

    runs = {}
    for groups in (1, 3):
        settings = dict(length_groups=groups, max_new_tokens=12, rollout_batch_size=12, mini_batch_size=12)
        ppo, _, _ = make_ppo(option, tmp_path / str(groups), **settings)
        ppo.rollouts = EndsEarly(ppo.cfg, ppo.eos_id, ppo.pad_id)
        batch = ppo.rollout(0)
        ppo.advantages(batch)
        stats = ppo.backward_micro_batch(batch, torch.arange(12), 0, scale=0.5, entropy=True)
        grads = {n: p.grad.clone() for n, p in ppo.module.named_parameters() if p.requires_grad}
        runs[groups] = batch, stats, grads, ppo.pass_tokens
    (one, one_stats, one_grads, one_tokens), (split, split_stats, split_grads, split_tokens) = runs[1], runs[3]
    lengths = one["mask"].sum(1)
    assert lengths.min() < lengths.max()  # answers of different lengths: the groups have different widths
    assert torch.equal(one["response"], split["response"])  # same samples (generation is not grouped)
    real = one["mask"].bool()  # values after an answer's end are never read (masked in GAE and the losses)
    assert torch.allclose(one["values"][real], split["values"][real], atol=1e-5)
    for key in ("ref_logprobs", "scores", "advantages", "returns"):
        assert torch.allclose(one[key], split[key], atol=1e-5), key
    assert one_stats.keys() == split_stats.keys() and "entropy" in one_stats
    for key in one_stats:
        assert split_stats[key] == pytest.approx(one_stats[key], abs=1e-5), key
    for name, grad in one_grads.items():
        assert torch.allclose(grad, split_grads[name], atol=1e-6, rtol=1e-4), name
    # the groups: every row once, shortest answers first, at most `groups` of them
    mask = one["mask"]
    grouped = length_groups(mask, one["query_mask"], 3)
    assert len(grouped) == 3 and sorted(torch.cat(grouped).tolist()) == list(range(12))
    assert mask[grouped[0]].sum(1).max() <= mask[grouped[-1]].sum(1).min()
    assert len(length_groups(mask[:7], one["query_mask"][:7], 3)) == 1  # groups keep at least 4 rows
    # the logged tokens per pass: each group's rows times its own longest prompt plus its longest answer
    prompt_lengths, answer_lengths = one["query_mask"].sum(1), mask.sum(1)
    assert one_tokens == 12 * int(prompt_lengths.max() + answer_lengths.max())
    assert split_tokens == sum(len(g) * int(prompt_lengths[g].max() + answer_lengths[g].max()) for g in grouped)
    assert split_tokens < one_tokens


@pytest.mark.parametrize("option", ["lora", "shared"])
def test_resume_after_a_kill_gives_the_same_final_weights(tmp_path, option):
    overrides = dict(steps=4, save_steps=2)
    whole, _, _ = make_ppo(option, tmp_path / "whole", **overrides)
    whole.train()
    expected = trainable_state(whole.module)

    cut, _, _ = make_ppo(option, tmp_path / "cut", **overrides)
    for _ in range(3):  # killed during step 4: the newest checkpoint is step 2's
        cut.train_step()
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "cut" / "checkpoints" / "step-000002" / "model.safetensors"))
    assert saved.keys() == expected.keys()  # trainable parameters only: no frozen trunk in the checkpoint
    resumed, _, _ = make_ppo(option, tmp_path / "cut", **overrides)
    assert resumed.step == 2
    resumed.train()
    got = trainable_state(resumed.module)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_resume_refuses_a_checkpoint_of_another_critic(tmp_path):
    ppo, _, _ = make_ppo("shared", tmp_path, steps=3, save_steps=1)
    ppo.train_step()
    with pytest.raises(ValueError, match="other value_model / lora settings"):
        make_ppo("lora", tmp_path, steps=3, save_steps=1)


def test_config_choices():
    assert PPOStageConfig().value_model == "full" and PPOStageConfig().gradient_checkpointing is False
    assert PPOStageConfig().rollout_backend == "transformers"
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ConfigError, match="rollout_backend: vllm is not installed"):
            PPOStageConfig(rollout_backend="vllm")


def test_reward_function_needs_a_value_model_unless_shared(tmp_path):
    tok, policy, _, prompts = tiny_world()
    with pytest.raises(ValueError, match="pass a value_model"):
        PPO(policy, tok, target_share(tok), prompts, small_cfg("lora"), tmp_path, seed=0)
    ppo = PPO(policy, tok, target_share(tok), prompts, small_cfg("shared"), tmp_path, seed=0)
    assert ppo.module.value_model is None


@pytest.mark.parametrize(("option", "policy_lora"), [("full", False), ("lora", True), ("shared", False)])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tmp_path, option, policy_lora):
    lora = LoraSettings(enabled=policy_lora, r=RANK, alpha=8, dropout=0.0)
    runs, updates = {}, {}
    for checkpointing in (False, True):
        # one pass per micro-batch (length_groups: 1), so the attention calls below count passes
        settings = dict(gradient_checkpointing=checkpointing, lora=lora, length_groups=1)
        ppo, _, _ = make_ppo(option, tmp_path / str(checkpointing), **settings)
        attention_calls = []
        for layer in ppo.module.modules():
            if type(layer).__name__ == "Qwen2Attention":
                layer.register_forward_hook(lambda *a, calls=attention_calls: calls.append(1))
        batch = ppo.rollout(0)
        ppo.advantages(batch)
        attention_calls.clear()
        ppo.optimizer.zero_grad()
        with checkpointing_active(ppo.checkpointed_layers):
            loss, _ = ppo._loss(batch, 0)
            loss.backward()
        grads = {n: p.grad.clone() for n, p in ppo.module.named_parameters() if p.requires_grad}
        runs[checkpointing] = (batch, loss.item(), grads, len(attention_calls), ppo)
        attention_calls.clear()
        ppo.update(batch, 0)  # the real update path: one minibatch, one epoch
        updates[checkpointing] = (len(attention_calls), trainable_state(ppo.module))
    (batch_off, loss_off, grads_off, calls_off, _), (batch_on, loss_on, grads_on, calls_on, ppo) = (
        runs[False],
        runs[True],
    )
    assert torch.equal(batch_on["response"], batch_off["response"])  # rollouts are untouched by checkpointing
    assert loss_on == pytest.approx(loss_off, rel=1e-6)
    assert grads_on.keys() == grads_off.keys()
    assert all(torch.allclose(grads_on[n], grads_off[n], atol=1e-7, rtol=1e-5) for n in grads_off)
    # Checkpointing really ran: every attention block of a trained trunk ran again in backward. Trunks per loss:
    # shared 1 (policy), full and lora 2 (policy, critic).
    trunks = 1 if option == "shared" else 2
    assert calls_off == trunks * LAYERS and calls_on == 2 * trunks * LAYERS
    assert ppo.checkpointed_layers and not any(layer.training for layer in ppo.checkpointed_layers)
    assert updates[True][0] == 2 * updates[False][0] == 2 * trunks * LAYERS
    weights_off, weights_on = updates[False][1], updates[True][1]
    assert all(torch.allclose(weights_on[n], weights_off[n], atol=1e-6) for n in weights_off)


@pytest.mark.parametrize(
    ("setting", "cuda", "bf16", "expected"),
    [
        ("auto", True, True, torch.bfloat16),  # a GPU with bf16: every PPO model in bf16
        ("auto", True, False, torch.float32),  # e.g. a V100: no bf16, and fp16 without a scaler is unsafe
        ("auto", False, False, torch.float32),  # CPU
        ("float32", True, True, torch.float32),  # asked for: taken as asked
        ("bfloat16", False, False, torch.bfloat16),
    ],
)
def test_dtype_choice(setting, cuda, bf16, expected):
    from align.models import choose_dtype

    assert choose_dtype(setting, cuda=cuda, bf16_supported=bf16) is expected


def test_ppo_models_follow_the_policy_dtype(tmp_path):
    """bf16 weights (as on a GPU under `auto`): the critic and the shared head take the trunk's dtype."""
    for option in ("full", "lora", "shared"):
        tok, policy, reward_model, prompts = world_with_reward_model()
        policy, reward_model = policy.to(torch.bfloat16), reward_model.to(torch.bfloat16)
        ppo = PPO(policy, tok, reward_model, prompts, small_cfg(option), tmp_path / option, seed=0)
        batch = ppo.rollout(0)
        assert batch["values"].dtype == torch.float32 and torch.isfinite(batch["values"]).all()
        critic = ppo.module.value_head if option == "shared" else ppo.module.value_model.score
        assert critic.weight.dtype == torch.bfloat16
        ppo.advantages(batch)
        assert all(torch.isfinite(torch.tensor(v)) for v in ppo.update(batch, 0).values())  # backward runs in bf16


# ---- rollouts behind a generator interface ----------------------------------------------------------------


def test_transformers_rollouts_are_generate_with_the_logprobs_of_its_logits(tmp_path):
    from align.rl.rollouts import TransformersRollouts, token_logprobs

    ppo, policy, _ = make_ppo("full", tmp_path)
    query, query_mask = ppo._left_pad([ppo.queries[i] for i in range(4)])
    responses, logprobs = TransformersRollouts(ppo.cfg, ppo.eos_id, ppo.pad_id).generate(policy, query, query_mask, 7)
    torch.manual_seed(7)
    out = policy.generate(
        input_ids=query,
        attention_mask=query_mask,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        max_new_tokens=6,
        eos_token_id=ppo.eos_id,
        pad_token_id=ppo.pad_id,
        output_scores=True,
        return_dict_in_generate=True,
    )
    assert torch.equal(responses, out.sequences[:, query.shape[1] :])
    # scores at temperature 1 and top_k 0 are the raw logits: the log-probs the tokens were drawn from
    expected = token_logprobs(torch.stack(out.scores, 1), responses, 1.0)
    assert torch.allclose(logprobs, expected, atol=1e-6)


def test_an_engine_is_synced_with_the_current_weights_before_each_rollout_after_an_update(tmp_path):
    from align.rl.rollouts import TransformersRollouts

    synced = []

    class Recording(TransformersRollouts):
        """The in-process generator, noting each sync and a checksum of the weights it was handed."""

        def sync(self, policy, step):
            synced.append((step, sum(float(p.detach().sum()) for p in policy.parameters())))

    ppo, _, _ = make_ppo("lora", tmp_path, steps=3, lora=LoraSettings(enabled=True, r=RANK, alpha=8))
    ppo.rollouts = Recording(ppo.cfg, ppo.eos_id, ppo.pad_id)
    for _ in range(3):
        ppo.train_step()
        current = sum(float(p.detach().sum()) for p in ppo.module.policy.parameters())
    assert [s for s, _ in synced] == [1, 2]  # none before the first rollout: the engine starts there
    assert synced[-1][1] != synced[0][1]
    assert current != synced[-1][1]  # the third update came after the last rollout


def test_vllm_rollouts_need_vllm(tmp_path):
    import importlib.util

    from align.rl.rollouts import VLLMRollouts

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed: its rollouts run on a GPU machine")
    tok, policy, _, _ = world_with_reward_model()
    with pytest.raises(ConfigError, match="vllm is not installed"):
        VLLMRollouts(PPOStageConfig(), policy, tok, tmp_path, tok.eos_token_id, tok.pad_token_id)
