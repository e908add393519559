"""GRPO and RLOO wrappers on tiny models: real TRL training steps, the reward is our reward model's score."""

import json

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from align.config import ConfigError, GRPOStageConfig, RecipeConfig, RLOOStageConfig, load_config
from align.tiny.model import build_model, build_tokenizer
from align.train.grpo import build_trainer, load_reward_function, train_online
from align.train.reward import load_reward_model

WORDS = ["apple", "bread", "chair", "door", "egg", "fish", "grape", "house"]
TRAINERS = {
    "grpo": (GRPOStageConfig, train_online, build_trainer),
    "rloo": (RLOOStageConfig, train_online, build_trainer),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    """A reward model saved as the reward stage saves one: a causal LM's body with a one-output score head."""
    root = tmp_path_factory.mktemp("rm")
    tok = tokenizer()
    lm = build_model(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, seed=1)
    lm.save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    rm = load_reward_model(str(root / "lm"), seed=3)
    rm.save_pretrained(root / "reward")
    tok.save_pretrained(root / "reward")
    return str(root / "reward")


def tokenizer():
    return build_tokenizer([f"tell me about the {w}, the {w} is kind" for w in WORDS], 300)


def policy():
    """Built in code, never saved: TRL cannot reload it by path, so the reference must be a copy."""
    tok = tokenizer()
    model = build_model(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    return model, tok


def prompts(n=8):
    return Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"tell me about the {WORDS[i % 8]}"}]} for i in range(n)]
    )


def fast(kind, **overrides):
    settings = dict(
        learning_rate=1e-2,
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
        max_length=64,
        warmup_ratio=0.0,
        logging_steps=1,
    )
    return TRAINERS[kind][0](**{**settings, **overrides})


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_trains_saves_and_reloads(kind, reward_dir, tmp_path):
    model, tok = policy()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    metrics = TRAINERS[kind][1](model, tok, prompts(), reward_dir, fast(kind), str(tmp_path / kind), seed=0)
    assert metrics["steps"] == 2 and metrics["prompts_too_long"] == 0
    assert "reward_first" in metrics and "reward_last" in metrics
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / kind).state_dict()
    assert set(loaded) == set(before)
    assert any(not torch.equal(before[k], loaded[k]) for k in before)
    history = json.loads((tmp_path / kind / "log_history.json").read_text())
    assert [h["step"] for h in history if "reward" in h] == [1, 2]


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_trl_rewards_are_our_reward_model_scores_of_the_conversation(kind, reward_dir, tmp_path):
    model, tok = policy()
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer, _ = TRAINERS[kind][2](model, tok, prompts(), reward_dir, fast(kind, max_steps=1), str(tmp_path), seed=0)
    # the KL reference is the starting policy itself (a copy, frozen), not a reload from a path
    ref = trainer.ref_model
    assert ref is not model and not ref.training
    assert all(torch.equal(start[k], v) for k, v in ref.state_dict().items())
    trainer.train()
    logged = trainer._logs
    rewards = next(iter(logged["rewards"].values()))
    assert len(logged["prompt"]) == len(rewards) == 4
    # Score each conversation as the reward stage trained on it: prompt + answer through the chat template, one
    # unpadded sequence at a time, reward at the last token.
    rm, rm_tok = load_reward_function(reward_dir)
    ours = []
    for prompt, completion in zip(logged["prompt"], logged["completion"], strict=True):
        assert completion[0]["role"] == "assistant"
        ids = rm_tok.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
        end_of_turn = rm_tok("<|im_end|>\n", add_special_tokens=False)["input_ids"]
        assert ids[-len(end_of_turn) :] == end_of_turn  # the reward is read after the template's end of turn
        with torch.no_grad():
            ours.append(rm(input_ids=torch.tensor([ids])).logits[0, 0].item())
    assert list(rewards) == pytest.approx(ours, abs=1e-5)
    assert max(ours) - min(ours) > 1e-4  # the completions really differ, so the check is not vacuous


def test_long_prompts_are_dropped_and_counted(reward_dir, tmp_path):
    model, tok = policy()
    long = [{"prompt": [{"role": "user", "content": " ".join(WORDS * 4)}]}]
    data = Dataset.from_list(list(prompts(4)) + long)
    _, dropped = build_trainer(model, tok, data, reward_dir, fast("grpo"), str(tmp_path), seed=0)
    assert dropped == 1
    with pytest.raises(ValueError, match="every prompt is longer than"):
        build_trainer(model, tok, Dataset.from_list(long), reward_dir, fast("grpo"), str(tmp_path), seed=0)


def test_prompts_must_be_conversations(reward_dir, tmp_path):
    model, tok = policy()
    with pytest.raises(ValueError, match="must be conversations"):
        train_online(model, tok, Dataset.from_list([{"prompt": "hi"}]), reward_dir, fast("grpo"), str(tmp_path), seed=0)
    with pytest.raises(ValueError, match="needs a 'prompt' column"):
        train_online(model, tok, Dataset.from_list([{"text": "hi"}]), reward_dir, fast("rloo"), str(tmp_path), seed=0)


def test_configs_check_group_sizes_and_load_from_the_recipe(tmp_path):
    with pytest.raises(ConfigError, match="multiple of num_generations"):
        GRPOStageConfig(per_device_train_batch_size=8, num_generations=3)
    with pytest.raises(ConfigError, match="num_generations must be >= 2"):
        RLOOStageConfig(num_generations=1)
    with pytest.raises(ConfigError, match="max_completion_length"):
        GRPOStageConfig(max_length=128, max_completion_length=128)
    path = tmp_path / "r.yaml"
    path.write_text("optimizer: rloo\nrloo:\n  num_generations: 4\n  beta: 0.1\ngrpo:\n  loss_type: dr_grpo\n")
    cfg = load_config(RecipeConfig, path)
    assert cfg.optimizer == "rloo" and cfg.rloo.num_generations == 4 and cfg.rloo.beta == 0.1
    assert cfg.grpo.loss_type == "dr_grpo" and cfg.grpo.beta == 0.04
    with pytest.raises(ConfigError, match="r.yaml:2: grpo.scale_rewards"):
        path.write_text("grpo:\n  scale_rewards: sometimes\n")
        load_config(RecipeConfig, path)


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_checkpointing_and_sampling_follow_the_config(kind, reward_dir, tmp_path):
    """TRL turns activation checkpointing on by default; the trainer must do what our config says."""
    model, tok = policy()
    cfg = fast(kind, temperature=0.7, top_p=0.9, beta=0.02, max_completion_length=12)
    trainer, _ = TRAINERS[kind][2](model, tok, prompts(), reward_dir, cfg, str(tmp_path), seed=0)
    args = trainer.args
    assert args.gradient_checkpointing is False and not model.is_gradient_checkpointing
    assert (args.temperature, args.top_p, args.beta, args.max_completion_length) == (0.7, 0.9, 0.02, 12)
    assert args.num_generations == 2 and args.bf16 is False


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_a_run_resumed_past_an_epoch_boundary_ends_where_an_uninterrupted_one_does(kind, reward_dir, tmp_path):
    """8 prompts, 2 per step: an epoch is 4 steps. The run is resumed from step 5's checkpoint (one step into the
    second epoch): it must resume (not restart), log every step once and end with the uninterrupted weights.
    The prompt sampler used to carry one generator across epochs, so the resumed epoch saw another order."""
    import shutil

    from safetensors.torch import load_file

    cfg = fast(kind, max_steps=7, save_steps=1, save_total_limit=10)
    full = TRAINERS[kind][1](*policy(), prompts(), reward_dir, cfg, str(tmp_path / "full"), seed=0)
    resumed_dir = tmp_path / "resumed" / "checkpoints"
    resumed_dir.mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "checkpoint-5", resumed_dir / "checkpoint-5")
    resumed = TRAINERS[kind][1](*policy(), prompts(), reward_dir, cfg, str(resumed_dir.parent), seed=0)
    assert resumed["resumed_from_step"] == 5 and resumed["steps"] == full["steps"] == 7

    def losses(directory):
        history = json.loads((directory / "log_history.json").read_text())
        steps = [h["step"] for h in history if "loss" in h]
        assert len(steps) == len(set(steps)), steps  # a step logged twice: the resume repeated work
        return {h["step"]: h["loss"] for h in history if "loss" in h}

    assert losses(resumed_dir.parent) == pytest.approx(losses(tmp_path / "full"), rel=1e-5, abs=1e-9)
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(resumed_dir.parent / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_a_diverging_run_stops_with_its_step_and_last_checkpoint(kind, reward_dir, tmp_path):
    from align.train.errors import TrainingDiverged

    cfg = fast(kind, learning_rate=1e30, max_steps=4, save_steps=1)
    with pytest.raises(TrainingDiverged, match=r"loss is NaN or infinite at step 2 .*checkpoint-1"):
        TRAINERS[kind][1](*policy(), prompts(), reward_dir, cfg, str(tmp_path / kind), seed=0)


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_vllm_settings_reach_trl(kind, reward_dir, tmp_path):
    model, tok = policy()
    vllm = dict(vllm_mode="server", vllm_server_base_url="http://127.0.0.1:8011", vllm_tensor_parallel_size=2)
    cfg = fast(kind, vllm_gpu_memory_utilization=0.5, **vllm)
    trainer, _ = build_trainer(model, tok, prompts(), reward_dir, cfg, str(tmp_path), seed=0)
    assert type(trainer.args).__name__ == ("GRPOConfig" if kind == "grpo" else "RLOOConfig")
    assert trainer.args.use_vllm is False and trainer.args.vllm_mode == "server"
    assert trainer.args.vllm_server_base_url == "http://127.0.0.1:8011"
    assert trainer.args.vllm_tensor_parallel_size == 2 and trainer.args.vllm_gpu_memory_utilization == 0.5


def test_use_vllm_without_vllm_is_a_config_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # as if vllm were not installed, even where it is
    with pytest.raises(ConfigError, match=r"pip install vllm; needs a GPU"):
        GRPOStageConfig(use_vllm=True)
    with pytest.raises(ConfigError, match="vllm_mode: server"):
        RLOOStageConfig(vllm_server_base_url="http://127.0.0.1:8000")
    with pytest.raises(ConfigError, match="vllm_tensor_parallel_size"):
        GRPOStageConfig(vllm_tensor_parallel_size=0)


def test_use_vllm_reaches_trls_config(monkeypatch, tmp_path):
    from trl import GRPOConfig, RLOOConfig

    import align.config
    from align.train.grpo import _online_args

    # vLLM itself needs a GPU, TRL's config objects do not: pretend the package is installed
    monkeypatch.setattr(align.config, "vllm_importable", lambda: True)
    for kind, trl_config in (("grpo", GRPOConfig), ("rloo", RLOOConfig)):
        args = trl_config(**_online_args(fast(kind, use_vllm=True), str(tmp_path), 0, "none", kind))
        assert args.use_vllm is True and args.vllm_mode == "colocate" and args.vllm_gpu_memory_utilization == 0.3
