"""Generation backends: batched greedy == one at a time, throughput counters, the factory, vLLM's install hint."""

import sys

import pytest
from helpers.tiny_lm import convs, save_tiny_lm

from align.config import BackendSettings, ConfigError, CritiqueReviseConfig, EvalConfig, PreferencesConfig
from align.config import SamplingSettings as S
from align.generation import TransformersBackend, build_backend, generation_metrics
from align.generation.base import shard_bounds

PROMPTS = [
    "How do I fix a bike?",
    "Fix it?",
    "Sure. To fix it, first look at the chain and then at the brakes, then fix a bike.",
    "I can't help",
    "How do I look at the brakes of a bike, and then fix the chain?",
    "look",
    "Sure.",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    model, tok = save_tiny_lm(path, PROMPTS)
    return model, tok, path


def test_batched_greedy_equals_one_at_a_time(tiny):
    model, tok, _ = tiny
    backend = TransformersBackend(model, tok, name="tiny")
    prompts = PROMPTS * 3  # 21 prompts of very different lengths: batches need real left padding
    one = [backend.generate(convs([p]), S(max_new_tokens=12, temperature=0, batch_size=1), seed=0)[0] for p in prompts]
    batched = backend.generate(convs(prompts), S(max_new_tokens=12, temperature=0, batch_size=8), seed=0)
    assert batched == one
    assert len(set(one)) > 1  # the replies differ, so order mistakes would show


def test_counters_feed_stage_metrics(tiny):
    model, tok, _ = tiny
    backend = TransformersBackend(model, tok, name="tiny")
    backend.generate(convs(PROMPTS), S(max_new_tokens=5, temperature=0, batch_size=4), seed=0)
    assert backend.samples_generated == len(PROMPTS)
    assert 0 < backend.tokens_generated <= 5 * len(PROMPTS)
    m = generation_metrics([backend, backend])  # the same backend twice counts once (policy == feedback)
    assert m["tokens_generated"] == backend.tokens_generated and m["samples_generated"] == len(PROMPTS)
    assert m["tokens_per_second"] == pytest.approx(backend.tokens_generated / backend.seconds, rel=0.01)


def test_factory_builds_in_process_backends(tiny):
    _, _, path = tiny
    backend = build_backend(BackendSettings(), str(path), name="x")
    assert isinstance(backend, TransformersBackend) and backend.name == "x"
    # openai without a served name for the run's own model keeps that model in-process
    local = build_backend(BackendSettings(kind="openai"), str(path), run_model=True)
    assert isinstance(local, TransformersBackend)
    served = build_backend(BackendSettings(kind="openai", model="policy"), str(path), run_model=True)
    assert type(served).__name__ == "OpenAIBackend" and served.model == "policy"


def test_shards_cover_everything_once():
    for n in range(0, 12):
        for k in (1, 2, 3, 5):
            b = shard_bounds(n, k)
            sizes = [b[i + 1] - b[i] for i in range(k)]
            assert b[0] == 0 and b[-1] == n and min(sizes) >= 0 and max(sizes) - min(sizes) <= 1


def test_vllm_missing_explains_how_to_install(tiny, monkeypatch):
    _, _, path = tiny
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if vllm were not installed, even where it is
    with pytest.raises(ImportError, match=r"pip install 'align\[vllm\]'") as info:
        build_backend(BackendSettings(kind="vllm"), str(path))
    assert "NVIDIA GPU" in str(info.value) and "backend.kind 'transformers'" in str(info.value)


def test_openai_settings_are_checked_per_stage():
    with pytest.raises(ConfigError, match="name a served model"):
        CritiqueReviseConfig(backend=BackendSettings(kind="openai"))
    CritiqueReviseConfig(feedback_model="served-critic", backend=BackendSettings(kind="openai"))
    # a served critic labels through its log-probabilities (checked against the server when the stage starts)
    PreferencesConfig(mode="ai_feedback", backend=BackendSettings(kind="openai"))
    with pytest.raises(ConfigError, match="run's own checkpoints"):
        EvalConfig(backend=BackendSettings(kind="openai"))
    with pytest.raises(ConfigError, match="max_concurrency"):
        BackendSettings(max_concurrency=0)


def test_vllm_size_settings_are_checked_and_reach_the_engine():
    from align.generation.vllm_backend import engine_arguments

    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        BackendSettings(kind="vllm", tensor_parallel_size=0)
    with pytest.raises(ConfigError, match="max_model_len"):
        BackendSettings(kind="vllm", max_model_len=0)
    settings = BackendSettings(kind="vllm", tensor_parallel_size=4, max_model_len=8192, gpu_memory_utilization=0.5)
    assert engine_arguments(settings) == {
        "dtype": "bfloat16",
        "gpu_memory_utilization": 0.5,
        "tensor_parallel_size": 4,
        "max_model_len": 8192,
    }
    assert engine_arguments(BackendSettings(kind="vllm", dtype="float16"))["max_model_len"] is None


def test_the_scoring_copy_next_to_vllm_goes_on_the_gpu_in_bf16():
    from align.stages.feedback import scoring_copy_placement

    assert scoring_copy_placement(cuda=True, bf16=True) == ("cuda", "bfloat16")
    assert scoring_copy_placement(cuda=True, bf16=False) == ("cuda", "float16")  # e.g. a V100
    assert scoring_copy_placement(cuda=False, bf16=False) == ("cpu", "float32")
