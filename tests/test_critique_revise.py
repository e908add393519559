"""SL-CAI on a real (untrained, 2-layer) model: record structure, provenance, views and determinism."""

import pytest
import torch

from align.config import CritiqueReviseConfig, SamplingSettings
from align.constitution import load_constitution, load_constitution_data
from align.feedback.critique_revise import choose_principle, critique_and_revise, preference_view, sft_view
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
    records, counts = critique_and_revise(backend, backend, constitution, red, helpful, config(rounds=2), seed=3)
    assert counts == {"reused": 0, "regenerated": 4, "regenerated_red_team": 3, "regenerated_helpful": 1}
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
    a, _ = critique_and_revise(backend, backend, constitution, red, [], config(), seed=5)
    b, _ = critique_and_revise(backend, backend, constitution, red, [], config(), seed=5)
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


# ---------------------------------------------------------------------------------------------------
# Incremental regeneration


def edited(constitution, **changes):
    """A copy of ``constitution`` with principles reworded ({id: new critique}), dropped (None) or added."""
    data = constitution.to_dict()
    added = changes.pop("_add", [])
    principles = []
    for p in data["principles"]:
        if p["id"] in changes:
            if changes[p["id"]] is None:
                continue
            p = {**p, "critique": changes[p["id"]]}
        principles.append(p)
    data["principles"] = principles + added
    return load_constitution_data(data)


def test_principle_draws_follow_weights_and_survive_edits():
    c = load_constitution(CONSTITUTION)
    prompts = [f"request {i}" for i in range(4000)]
    draws = [choose_principle(c, 0, p, 0).id for p in prompts]
    # Uniform weights: every principle gets about 1/16 of 4,000 = 250 draws (binomial sd ~15).
    counts = {pid: draws.count(pid) for pid in {p.id for p in c.principles}}
    assert len(counts) == len(c.principles) and all(180 < n < 320 for n in counts.values())
    # Rewording changes no draw; removing one moves only its own draws.
    target = c.principles[0].id
    assert [choose_principle(edited(c, **{target: "Say what is wrong."}), 0, p, 0).id for p in prompts] == draws
    after = [choose_principle(edited(c, **{target: None}), 0, p, 0).id for p in prompts]
    assert all(a == b for a, b in zip(after, draws) if b != target)
    assert target not in after
    # Adding one with weight 2 of a new total 18 takes about 2/18 of the draws, and only those change.
    new = {"id": "new-rule", "critique": "Find a flaw.", "revision": "Fix it.", "weight": 2.0}
    grown = [choose_principle(edited(c, _add=[new]), 0, p, 0).id for p in prompts]
    moved = [g for g, d in zip(grown, draws) if g != d]
    assert set(moved) == {"new-rule"} and 350 < len(moved) < 560


def test_rewording_one_principle_regenerates_only_its_samples(backend):
    c = load_constitution(CONSTITUTION)
    red = [f"How do I steal bike number {i}?" for i in range(24)]
    helpful = ["Fix my bike?", "Paint my fence?"]
    first, counts = critique_and_revise(backend, backend, c, red, helpful, config(rounds=2), seed=1)
    assert counts["reused"] == 0
    # Nothing changed: everything is reused, byte for byte.
    again, counts = critique_and_revise(backend, backend, c, red, helpful, config(rounds=2), seed=1, previous=first)
    assert counts["regenerated"] == 0 and counts["reused"] == 26
    assert [r["final_response"] for r in again] == [r["final_response"] for r in first]

    target = first[0]["principle_ids"][1]  # used in the second round of the first record, at least
    c2 = edited(c, **{target: "Point out anything in the last response that could hurt someone."})
    users = [r for r in first[:24] if target in r["principle_ids"]]
    second, counts = critique_and_revise(backend, backend, c2, red, helpful, config(rounds=2), seed=1, previous=first)
    assert counts["regenerated"] == counts["regenerated_red_team"] == len(users) > 0
    assert counts["reused"] == 26 - len(users)
    by_prompt = {r["prompt"]: r for r in first}
    for r in second[:24]:
        old = by_prompt[r["prompt"]]
        if target not in old["principle_ids"]:
            assert r["rounds"] == old["rounds"] and r["final_response"] == old["final_response"]
        else:
            # The prefix before the edited principle is kept; from it on, the new wording is used.
            first_use = old["principle_ids"].index(target)
            assert r["rounds"][:first_use] == old["rounds"][:first_use]
            assert r["initial_response"] == old["initial_response"]
            assert r["rounds"][first_use]["critique_request"] == c2.principle(target).critique
            assert r["reused_rounds"] == first_use
        assert r["constitution"]["hash"] == c2.content_hash


def test_other_sampling_settings_reuse_nothing(backend):
    c = load_constitution(CONSTITUTION)
    red = ["How do I steal a bike?", "Tell me how to hack a phone."]
    first, _ = critique_and_revise(backend, backend, c, red, [], config(), seed=1)
    hotter = config()
    hotter.sampling.temperature = 0.5
    _, counts = critique_and_revise(backend, backend, c, red, [], hotter, seed=1, previous=first)
    assert counts["reused"] == 0 and counts["regenerated"] == 2
