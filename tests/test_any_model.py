"""Any Hugging Face chat model: loading settings, chat templates of other families, stop tokens, clear errors.

Models are random-initialised stand-ins of real architectures with the chat templates of the families people
bring (tests/helpers/real_world.py): ChatML on Qwen2, Llama 3 on Llama, and a Mistral-style template that
rejects a system turn and requires strict alternation.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.real_world import build_model_dir

from align.chat import check_templates, fit, render
from align.config import ConfigError, ModelLoading, RecipeConfig, SamplingSettings, apply_limit, load_config
from align.feedback import prompts
from align.models import eos_token_ids, load_causal_lm, load_tokenizer, resolve, write_pointer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {kind: build_model_dir(kind, root / kind) for kind in ("chatml", "llama3", "mistral")}


SYSTEM_FEW_SHOT = [
    [
        {"role": "system", "content": "You are a careful critic."},
        prompts.user("How do I whittle a spoon?"),
        prompts.assistant("Carve away from your body with a sharp knife."),
    ]
]


@pytest.mark.parametrize("kind", ["chatml", "llama3", "mistral"])
def test_a_full_critique_revise_conversation_renders_through_every_template(models, kind):
    """A few-shot example with a system turn used to pass validation and then fail on Mistral-style templates
    ("Conversation roles must alternate") after generation had started."""
    tokenizer = load_tokenizer(str(models[kind]))
    check_templates(tokenizer, kind, "base_model", SYSTEM_FEW_SHOT)  # raises ConfigError on failure
    conversation = prompts.revision_messages(
        SYSTEM_FEW_SHOT, [prompts.user("Q?"), prompts.assistant("A.")], "Critique it.", "Fine.", "Revise it."
    )
    text = render(tokenizer, conversation, add_generation_prompt=True)
    assert "You are a careful critic." in text and "Revise it." in text


def test_mistral_style_template_rejects_raw_system_turns_and_fit_folds_them(models):
    tokenizer = load_tokenizer(str(models["mistral"]))
    raw = [{"role": "system", "content": "Be brief."}, prompts.user("Hi"), prompts.user("Again")]
    with pytest.raises(Exception, match="System role not supported"):
        tokenizer.apply_chat_template(raw, tokenize=False)
    fitted = fit(raw, tokenizer)
    assert fitted == [prompts.user("Be brief.\n\nHi\n\nAgain")]
    # a template that renders system turns keeps them
    chatml = load_tokenizer(str(models["chatml"]))
    assert fit(raw, chatml)[0] == {"role": "system", "content": "Be brief."}


def test_a_template_that_cannot_render_a_conversation_fails_before_any_stage(models, tmp_path):
    broken = tmp_path / "broken"
    tokenizer = load_tokenizer(str(models["chatml"]))
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['content'] }}"
        "{% if m['role'] == 'assistant' %}{{ raise_exception('no assistant turns') }}{% endif %}{% endfor %}"
    )
    tokenizer.save_pretrained(broken)
    with pytest.raises(ConfigError, match=r"base_model: the chat template of m cannot render a critique-and-revise"):
        check_templates(load_tokenizer(str(broken)), "m", "base_model")


def test_generation_stops_at_every_eos_of_the_generation_config(models, tmp_path):
    """Llama 3 ends turns with <|eot_id|>, listed only in generation_config; the tokenizer's EOS is
    <|end_of_text|>. A model that always says <|eot_id|> must stop after one token, not run to max_new_tokens."""
    from align.generation.transformers_backend import TransformersBackend

    model, tokenizer = load_causal_lm(str(models["llama3"]))
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert tokenizer.eos_token_id != eot and eot in eos_token_ids(model, tokenizer)
    head = torch.nn.Linear(model.config.hidden_size, len(tokenizer), bias=True)
    with torch.no_grad():  # whatever the hidden state, <|eot_id|> scores highest
        head.weight.zero_()
        head.bias.zero_()
        head.bias[eot] = 10.0
    model.lm_head = head
    backend = TransformersBackend(model, tokenizer, "llama3")
    replies = backend.generate([[prompts.user("Hi")]], SamplingSettings(max_new_tokens=20, temperature=0.0), seed=0)
    assert replies == [""] and backend.tokens_generated == 1


def test_loading_settings_reach_from_pretrained(models):
    model, _ = load_causal_lm(str(models["chatml"]), ModelLoading(torch_dtype="bfloat16", attn_implementation="eager"))
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    with pytest.raises(ConfigError, match="sft_cai.load_in_4bit: 4-bit QLoRA needs a CUDA GPU"):
        load_causal_lm(str(models["chatml"]), ModelLoading(load_in_4bit=True), field="sft_cai")


def test_a_stage_that_stands_for_a_model_points_at_it(tmp_path):
    write_pointer(tmp_path / "sft", "Qwen/Qwen2.5-1.5B-Instruct")
    assert resolve(tmp_path / "sft") == "Qwen/Qwen2.5-1.5B-Instruct"
    assert resolve(str(tmp_path / "elsewhere")) == str(tmp_path / "elsewhere")


def test_hub_id_without_network_names_the_field_and_says_to_pass_a_local_path():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"}
    code = "from align.models import load_tokenizer\nload_tokenizer('someorg/not-cached-model', field='base_model')\n"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "ConfigError: base_model: cannot load 'someorg/not-cached-model' from the Hugging Face hub" in result.stderr
    assert "pass its local path" in result.stderr


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_lora_target_modules_take_a_list_and_trl_arguments_pass_through(tmp_path):
    cfg = load_config(
        RecipeConfig,
        write(
            tmp_path,
            "base_model: m\nsft_cai:\n  lora: {enabled: true, target_modules: [q_proj, v_proj]}\n"
            "  trl: {max_grad_norm: 0.5, packing: true}\n",
        ),
    )
    assert cfg.sft_cai.lora.target_modules == ["q_proj", "v_proj"]
    from align.train.common import peft_config, trainer_kwargs

    assert set(peft_config(cfg.sft_cai.lora).target_modules) == {"q_proj", "v_proj"}
    kwargs = trainer_kwargs(cfg.sft_cai, str(tmp_path), 0, "none", "sft_cai")
    assert kwargs["max_grad_norm"] == 0.5 and kwargs["packing"] is True


def test_unknown_or_shadowing_trl_arguments_fail_before_any_stage(tmp_path):
    from align.stages.context import check_trl

    cfg = load_config(RecipeConfig, write(tmp_path, "base_model: m\ndpo:\n  trl: {max_grad_nrom: 1.0}\n"))
    with pytest.raises(
        ConfigError, match=r"recipe.yaml:3: dpo.trl.max_grad_nrom: DPOConfig has no argument.*max_grad_norm"
    ):
        check_trl(cfg)
    cfg = load_config(RecipeConfig, write(tmp_path, "base_model: m\ndpo:\n  trl: {learning_rate: 1.0}\n"))
    with pytest.raises(ConfigError, match=r"\['learning_rate'\] are typed settings of the stage"):
        check_trl(cfg)


def test_no_base_model_default_and_no_tiny_default_anywhere(tmp_path):
    from align.stages import prepare

    with pytest.raises(ConfigError, match="base_model: required"):
        prepare(load_config(RecipeConfig, write(tmp_path, "run_name: x\n")))
    cfg = load_config(RecipeConfig, write(tmp_path, "base_model: m\n"))
    for section in (cfg.critique_revise, cfg.preferences, cfg.ppo, cfg.grpo, cfg.rloo, cfg.eval):
        for value in vars(section).values():
            assert "tiny" not in str(value)


def test_nothing_outside_the_tiny_world_imports_it():
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "align").rglob("*.py")
        if "tiny" not in path.relative_to(ROOT / "align").parts and "align.tiny" in path.read_text()
    ]
    assert offenders == []


def test_limit_caps_every_source_and_step_in_its_own_run_dir():
    cfg = load_config(RecipeConfig, ROOT / "recipes" / "configs" / "cai_qwen2.5_1.5b.yaml")
    small = apply_limit(cfg, 8)
    assert small.run_name == "cai-qwen2.5-1.5b-limit8"
    for source in small.sources().values():
        assert source.limit == 8
    assert small.sft_cai.max_steps == small.dpo.max_steps == small.reward.max_steps == 8 and small.ppo.steps == 8
    with pytest.raises(ConfigError, match="--limit must be >= 1"):
        apply_limit(cfg, 0)
