"""What every stage shares, built once before the first stage runs: and every check that can run then, does.

:func:`prepare` loads the constitution and the world, checks every model path and chat template, loads every
prompt source (so a bad row, a missing column or a world source without a world fails in seconds, not after
the base model trained for hours), and checks the ``trl:`` pass-through keys against TRL's configs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from align.config import ConfigError, PromptSource, RecipeConfig, locate
from align.sources import Prompt, load_conversations, load_pairs, load_prompts, prompts_hash
from align.worlds import World, load_world, world_model

PAIR_SOURCES = ("preferences.helpfulness",)
CONVERSATION_SOURCES = ("sft.dataset",)


@dataclass
class Result:
    """What a stage function gives the pipeline: manifest metrics and tracker tables."""

    metrics: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, tuple[list[str], list[list[Any]]]] = field(default_factory=dict)


@dataclass
class Context:
    """The run's configuration, constitution, world, and every source already loaded and checked."""

    config: RecipeConfig
    constitution: Any
    world: World | None
    data: dict[str, list[Any]]  # config field -> prompts (Prompt), pairs or SFT conversations
    counts: dict[str, dict[str, int]]  # config field -> rows read, duplicates dropped
    is_main_process: bool = True

    def prompts(self, field_name: str) -> list[Prompt]:
        return self.data.get(field_name, [])

    def fingerprint(self, field_name: str) -> str | None:
        """A content hash of a loaded source, for stage manifests: editing the file or its limit redoes the stage."""
        rows = self.data.get(field_name)
        if rows is None:
            return None
        if rows and isinstance(rows[0], Prompt):
            return prompts_hash(rows)
        import hashlib
        import json

        return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _default_sources(config: RecipeConfig) -> dict[str, PromptSource]:
    """Sources a stage needs, with the documented fallbacks filled in (online RL prompts = preferences prompts)."""
    sources = config.sources()
    online = f"{config.optimizer}.prompts"
    if config.optimizer != "dpo" and online not in sources and config.preferences.prompts is not None:
        sources[online] = config.preferences.prompts
    return sources


def _required(config: RecipeConfig, sources: dict[str, PromptSource], world: World | None) -> None:
    needed = ["critique_revise.red_team_prompts"]
    if config.preferences.mode == "ai_feedback":
        needed.append("preferences.prompts")
    if config.optimizer != "dpo":
        needed.append(f"{config.optimizer}.prompts")
    for name in needed:
        if name not in sources:
            raise ConfigError(f"{locate(config, name)}: required (a file, folder, hub dataset or world source)")
    suites = ("harmful_prompts", "benign_prompts", "over_refusal", "hhh")
    if not any(f"eval.{s}" in sources for s in suites) and world is None:
        raise ConfigError(f"{locate(config, 'eval')}: give at least one suite ({', '.join(suites)})")


def check_models(config: RecipeConfig, world: World | None) -> None:
    """Every model the run names exists (a local path) or is a hub id, and its chat template renders what the
    chain will ask of it. A world's own base model does not exist yet; it is checked once trained."""
    from align.chat import check_templates
    from align.models import load_tokenizer

    few_shot = ()
    if config.critique_revise.use_few_shot:
        from align.constitution import load_constitution

        few_shot = load_constitution(config.constitution).few_shot
    fields = {
        "base_model": None if world_model(config.base_model, world) else config.base_model,
        "critique_revise.feedback_model": config.critique_revise.feedback_model
        if config.critique_revise.backend.kind != "openai"
        else None,
        "preferences.feedback_model": config.preferences.feedback_model,
        "eval.feedback_model": config.eval.feedback_model,
        # the pair strategy's attacker goes through eval.backend: a served name is the server's to check
        "red_team.attacker_model": config.red_team.attacker_model
        if config.red_team is not None and config.eval.backend.kind != "openai"
        else None,
    }
    for name, model in fields.items():
        if model is None:
            continue
        tokenizer = load_tokenizer(model, trust_remote_code=config.trust_remote_code, field=locate(config, name))
        check_templates(tokenizer, model, locate(config, name), few_shot)


def check_trl(config: RecipeConfig) -> None:
    """``trl:`` keys of every TRL-backed stage exist in its TRL config and do not shadow a typed setting."""
    from trl import DPOConfig, GRPOConfig, RewardConfig, RLOOConfig, SFTConfig

    from align.train.common import check_trl_arguments, trainer_kwargs

    sections = {"sft": SFTConfig, "sft_cai": SFTConfig, "dpo": DPOConfig, "grpo": GRPOConfig, "rloo": RLOOConfig}
    if config.reward is not None:
        sections["reward"] = RewardConfig
    for name, trl_config in sections.items():
        section = getattr(config, name)
        if section.trl:
            check_trl_arguments(lambda key, name=name: locate(config, f"{name}.trl.{key}"), section.trl, trl_config)
            trainer_kwargs(section, "/nonexistent", 0, "none", name)  # raises on a key that shadows a typed one


def with_world_suites(sources: dict[str, PromptSource], world: World | None) -> dict[str, PromptSource]:
    """A world's held-out suites are the default evaluation: added where the config names no source of its own."""
    if world is not None:
        for suite in ("harmful", "benign"):
            sources.setdefault(f"eval.{suite}_prompts", PromptSource(f"{world.name}:{suite}/eval"))
    return sources


def load_sources(
    config: RecipeConfig, sources: dict[str, PromptSource], world: World | None
) -> tuple[dict[str, list[Any]], dict[str, dict[str, int]]]:
    """Every source read and checked (prompts, pairs, conversations, HHH questions); errors name file, row, field."""
    from align.evaluation.hhh import load_hhh
    from align.evaluation.suites import check_over_refusal

    data, counts = {}, {}
    for name, source in sources.items():
        where = locate(config, name)
        if name in PAIR_SOURCES:
            data[name] = load_pairs(source, world, where)
        elif name in CONVERSATION_SOURCES:
            data[name] = load_conversations(source)
        elif name == "eval.hhh":  # its own layouts (the CAI paper's JSONL, BIG-bench's task)
            data[name] = load_hhh(source.path)[: source.limit]
        else:
            data[name], counts[name] = load_prompts(source, world, where)
    if "eval.over_refusal" in data:
        check_over_refusal(data["eval.over_refusal"], sources["eval.over_refusal"].path)
    return data, counts


def prepare(config: RecipeConfig) -> Context:
    """Load and check everything a run needs before its first stage; errors are ConfigError or DataError."""
    from align.constitution import load_constitution
    from align.distributed import process_state

    if not config.base_model:
        raise ConfigError(
            f"{locate(config, 'base_model')}: required: a hub id, a local model directory, or a world's model"
        )
    if config.optimizer != "dpo" and config.reward is None:
        raise ConfigError(
            f"{locate(config, 'optimizer')}: {config.optimizer} trains against a reward model; add a reward: section"
        )
    constitution = load_constitution(config.constitution)
    world = load_world(config)
    sources = with_world_suites(_default_sources(config), world)
    _required(config, sources, world)
    check_models(config, world)
    check_trl(config)
    data, counts = load_sources(config, sources, world)
    return Context(config, constitution, world, data, counts, process_state().is_main_process)
