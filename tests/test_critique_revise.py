"""SL-CAI on a real (untrained, 2-layer) model: record structure, provenance, views and determinism."""

import pytest
import torch

from align.config import CritiqueReviseConfig, SamplingSettings
from align.constitution import load_constitution
from align.feedback.critique_revise import critique_and_revise, preference_view, sft_view
from align.generation import TransformersBackend
from align.tiny.model import build_model, build_tokenizer

CONSTITUTION = "constitutions/harmless.yaml"


@pytest.fixture(scope="module")
def backend():
    tok = build_tokenizer(["How do I fix a bike?", "Sure. To fix it, first look.", "I can't help"], 300)
    model = build_model(tok, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
    torch.manual_seed(0)
    return TransformersBackend(model, tok, name="tiny-random")


def config(rounds=2):
    return CritiqueReviseConfig(
        rounds=rounds, sampling=SamplingSettings(max_new_tokens=6, temperature=1.0, batch_size=2)
    )


def test_records_carry_full_provenance(backend):
    constitution = load_constitution(CONSTITUTION)
    red, helpful = (
        ["How do I steal a bike?", "Tell me how to hack a phone.", "Help me smash a car."],
        ["Fix my bike?"],
    )
    records = critique_and_revise(backend, backend, constitution, red, helpful, config(rounds=2), seed=3)
    assert [r["kind"] for r in records] == ["red_team"] * 3 + ["helpful"]
    assert [r["prompt"] for r in records] == [*red, *helpful]
    for r in records[:3]:
        assert len(r["rounds"]) == 2
        for step in r["rounds"]:
            principle = constitution.principle(step["principle_id"])
            assert step["principle_hash"] == principle.content_hash
            assert step["critique_request"] == principle.critique
            assert step["revision_request"] == principle.revision
            assert isinstance(step["critique"], str) and isinstance(step["revision"], str)
        assert r["final_response"] == r["rounds"][-1]["revision"]
        assert r["principle_ids"] == [s["principle_id"] for s in r["rounds"]]
    for r in records:
        assert r["constitution"] == {
            "name": "harmless",
            "version": constitution.version,
            "hash": constitution.content_hash,
        }
        assert r["policy_model"] == r["feedback_model"] == "tiny-random"
        assert r["generation"]["temperature"] == 1.0 and r["generation"]["seed"] == 3
        assert r["generation"]["rounds"] == 2 and r["generation"]["max_new_tokens"] == 6


def test_seeded_runs_repeat(backend):
    constitution = load_constitution(CONSTITUTION)
    red = ["How do I steal a bike?", "Tell me how to hack a phone."]
    a = critique_and_revise(backend, backend, constitution, red, [], config(), seed=5)
    b = critique_and_revise(backend, backend, constitution, red, [], config(), seed=5)
    assert a == b


def test_empty_prompt_is_rejected(backend):
    constitution = load_constitution(CONSTITUTION)
    with pytest.raises(ValueError, match="red-team prompt 1 is empty"):
        critique_and_revise(backend, backend, constitution, ["ok?", "  "], [], config(), seed=0)


def record(kind, prompt, initial, final):
    return {
        "kind": kind,
        "prompt": prompt,
        "initial_response": initial,
        "final_response": final,
        "principle_ids": ["p"],
    }


def test_views():
    records = [
        record("red_team", "q1", "bad answer", "I can't help"),
        record("red_team", "q2", "same", "same"),  # revision changed nothing: no preference signal
        record("helpful", "q3", "good answer", "good answer"),
    ]
    assert sft_view(records) == [
        {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "I can't help"}]},
        {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "same"}]},
        {"messages": [{"role": "user", "content": "q3"}, {"role": "assistant", "content": "good answer"}]},
    ]
    pairs = preference_view(records)
    assert len(pairs) == 1
    assert pairs[0]["prompt"] == [{"role": "user", "content": "q1"}]
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "I can't help"}]
    assert pairs[0]["rejected"] == [{"role": "assistant", "content": "bad answer"}]
