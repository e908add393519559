"""The two stages where the constitution speaks: SL-CAI's critiques and revisions, and RL-CAI's AI labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from align.config import ConfigError, PromptLimits, SamplingSettings
from align.data import DataError, read_jsonl, write_jsonl_atomic
from align.generation import Backend
from align.sources import Prompt, context_length, limit_length
from align.stages.context import Context, Result


def limited(
    prompts: list[Prompt], backend: Backend, limits: PromptLimits, sampling: SamplingSettings, where: str
) -> tuple[list[Prompt], dict[str, int]]:
    """Apply ``prompt_limits``; ``auto`` leaves room in the model's context for the reply."""
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is None:  # a served model: the server enforces its own context length
        return prompts, {}
    budget = limits.max_prompt_tokens
    if budget == "auto":
        window = context_length(getattr(backend, "model", None), tokenizer)
        budget = None if window is None else max(1, window - sampling.max_new_tokens)
    return limit_length(prompts, tokenizer, budget, limits.overlong, where)


def critique_revise(
    ctx: Context, policy_dir: Path, policy_name: str, out: Path, previous: list[dict[str, Any]]
) -> Result:
    """SL-CAI (Bai et al. 2022, section 3): responses to red-team prompts, critiqued and revised per principle.

    Generation runs in crash-safe shards under ``out/shards``; ``previous`` samples whose principles did not change
    are reused. Writes samples.jsonl (everything, with provenance), sft.jsonl (revisions + helpful answers) and
    preferences.jsonl (revision over original).
    """
    from align.feedback.critique_revise import critique_and_revise_sharded, preference_view, sft_view
    from align.generation import build_backend, generation_metrics

    config = ctx.config
    section = config.critique_revise
    trust = config.trust_remote_code
    policy = build_backend(section.backend, str(policy_dir), name=policy_name, trust_remote_code=trust, run_model=True)
    feedback = (
        build_backend(section.backend, section.feedback_model, trust_remote_code=trust)
        if section.feedback_model
        else policy
    )
    red, red_limits = limited(
        ctx.prompts("critique_revise.red_team_prompts"),
        policy,
        section.prompt_limits,
        section.sampling,
        "critique_revise.red_team_prompts",
    )
    helpful, helpful_limits = limited(
        ctx.prompts("critique_revise.helpful_prompts"),
        policy,
        section.prompt_limits,
        section.sampling,
        "critique_revise.helpful_prompts",
    )
    records, counts = critique_and_revise_sharded(
        policy,
        feedback,
        ctx.constitution,
        [p.conversation() for p in red],
        [p.conversation() for p in helpful],
        section,
        config.seed,
        out / "shards",
        previous,
    )
    for key in red_limits:
        counts[key] = red_limits[key] + helpful_limits.get(key, 0)
    earlier = counts.get("regenerated_earlier", 0)  # in shards an interrupted attempt had finished
    note = f" ({earlier} of them by an earlier attempt)" if earlier else ""
    reused, regenerated = counts["reused"], counts["regenerated"]
    print(f"[align] critique_revise: reused {reused} samples, regenerated {regenerated}{note}", flush=True)
    pairs = preference_view(records)
    if ctx.is_main_process:
        write_jsonl_atomic(out / "samples.jsonl", records)
        write_jsonl_atomic(out / "sft.jsonl", sft_view(records))
        write_jsonl_atomic(out / "preferences.jsonl", pairs)
    columns = ["prompt", "initial_response", "round", "principle", "critique", "revision"]
    rows = [
        [r["prompt"], r["initial_response"], k + 1, step["principle_id"], step["critique"], step["revision"]]
        for r in records
        for k, step in enumerate(r["rounds"])
    ]
    metrics = {
        "red_team": len(red),
        "helpful": len(helpful),
        "preference_pairs": len(pairs),
        **counts,
        **generation_metrics([policy, feedback]),
    }
    return Result(metrics, {"samples": (columns, rows)})


def preferences(
    ctx: Context,
    helpful: tuple[Path, str],
    sl_cai: tuple[Path, str],
    samples_dir: Path,
    out: Path,
) -> Result:
    """Preference pairs: SL-CAI's revision-vs-original pairs, or RL-CAI labels (AI feedback), plus helpfulness pairs.

    RL-CAI (Bai et al. 2022, section 4.1): two responses per prompt, labelled by the feedback model reading its
    (A)/(B) probabilities under sampled principles, both orders. ``helpful`` and ``sl_cai`` are (model directory,
    name) of the helpful model (the default labeller) and the SL-CAI model.
    """
    section = ctx.config.preferences
    if section.mode == "revision_pairs":
        rows = [{**r, "label": 1.0} for r in read_jsonl(samples_dir / "preferences.jsonl")]
        metrics: dict[str, Any] = {"pairs": len(rows)}
    else:
        rows, labels, metrics = _ai_labels(ctx, helpful, sl_cai, out)
        if ctx.is_main_process:
            write_jsonl_atomic(out / "labels.jsonl", labels)
        if ctx.world is not None:  # the reference judge checks the AI labels (evaluation only, never training)
            metrics.update(ctx.world.label_agreement(labels))
    helpfulness = [
        {**row, "label": 1.0, "principle_ids": [], "source": "helpfulness"}
        for row in ctx.data.get("preferences.helpfulness", [])
    ]
    rows = rows + helpfulness
    metrics["helpfulness_pairs"] = len(helpfulness)
    if not rows:
        raise DataError(f"preferences: no preference pairs to train on (mode {section.mode})")
    if ctx.is_main_process:
        write_jsonl_atomic(out / "preferences.jsonl", rows)
    columns = ["prompt", "chosen", "rejected", "label", "principles"]
    table = [
        [
            r["prompt"][-1]["content"],
            r["chosen"][-1]["content"],
            r["rejected"][-1]["content"],
            r["label"],
            ", ".join(r.get("principle_ids", [])),
        ]
        for r in rows
    ]
    return Result(metrics, {"preference_pairs": (columns, table)})


def _ai_labels(
    ctx: Context, helpful: tuple[Path, str], sl_cai: tuple[Path, str], out: Path
) -> tuple[list[dict], list[dict], dict[str, Any]]:
    from align.feedback.preferences import ai_feedback_preferences_sharded
    from align.generation import build_backend, generation_metrics

    config = ctx.config
    section = config.preferences
    trust = config.trust_remote_code
    if section.pair_from == "sl_cai" and section.sampling.temperature == 0:
        raise ConfigError("preferences.sampling.temperature: 0 (greedy) gives two identical responses per prompt")
    sl_cai_model = build_backend(
        section.backend, str(sl_cai[0]), name=sl_cai[1], trust_remote_code=trust, run_model=True
    )
    helpful_model = build_backend(
        section.backend, str(helpful[0]), name=helpful[1], trust_remote_code=trust, run_model=True
    )
    first = helpful_model if section.pair_from == "sft_and_sl_cai" else sl_cai_model
    # The feedback model is loaded once and serves both reasoning (chain of thought) and scoring.
    feedback = (
        build_backend(section.backend, section.feedback_model, trust_remote_code=trust)
        if section.feedback_model
        else helpful_model
    )
    scorer = _feedback_scorer(section, feedback, section.feedback_model or str(helpful[0]), trust)
    prompts, limits = limited(
        ctx.prompts("preferences.prompts"), feedback, section.prompt_limits, section.sampling, "preferences.prompts"
    )
    rows, labels, metrics = ai_feedback_preferences_sharded(
        [p.conversation() for p in prompts],
        first,
        sl_cai_model,
        scorer,
        ctx.constitution,
        section,
        config.seed,
        out / "shards",
        reasoner=feedback,
    )
    metrics.update(limits)
    metrics["label_seconds"] = round(scorer.seconds, 2)
    metrics.update(generation_metrics([first, sl_cai_model, feedback]))
    metrics["mean_label"] = sum(r["label"] for r in rows) / max(len(rows), 1)
    return rows, labels, metrics


def _feedback_scorer(section, feedback: Backend, source: str, trust: bool):
    """What reads the feedback model's P(A): its in-process weights, or a server's log-probabilities.

    ``source`` is the feedback model's directory or hub id (for a served model, its served name), whose
    tokenizer renders the comparison and finds the option letters.
    """
    from align.feedback.preferences import OptionScorer, ServedOptionScorer
    from align.generation import TransformersBackend
    from align.generation.openai_backend import OpenAIBackend
    from align.models import load_causal_lm, load_tokenizer

    if isinstance(feedback, TransformersBackend):
        return OptionScorer(feedback.model, feedback.tokenizer, section.batch_size, name=feedback.name)
    if isinstance(feedback, OpenAIBackend):
        tokenizer = load_tokenizer(source, trust_remote_code=trust, field="preferences.feedback_model")
        scorer = ServedOptionScorer(feedback, tokenizer, name=feedback.name, top_logprobs=section.top_logprobs)
        scorer.check()  # a server without log-probabilities fails here, before any response is sampled
        return scorer
    # vLLM generates: scoring reads logits, so a transformers copy is loaded too, on the GPU vLLM runs on.
    import torch

    from align.config import ModelLoading

    cuda = torch.cuda.is_available()
    device, dtype = scoring_copy_placement(cuda, cuda and torch.cuda.is_bf16_supported())
    model, tokenizer = load_causal_lm(source, ModelLoading(torch_dtype=dtype), trust_remote_code=trust)
    return OptionScorer(model.to(device), tokenizer, section.batch_size, name=feedback.name)


def scoring_copy_placement(cuda: bool, bf16: bool) -> tuple[str, Literal["bfloat16", "float16", "float32"]]:
    """(device, dtype) for the transformers copy that scores when vLLM generates.

    On a GPU it is bf16 (fp16 where bf16 is missing), as the critic is served: a 70B critic in fp32 on CPU would
    take 280 GB and hours. float32 on CPU only where there is no GPU (then vLLM itself cannot run either).
    """
    if not cuda:
        return "cpu", "float32"
    return "cuda", "bfloat16" if bf16 else "float16"
