"""The harder tiny world (issue 15): attack styles around requests, some trained on, some held out."""

from __future__ import annotations

import pytest

from align.config import ConfigError, RecipeConfig
from align.constitution import load_constitution
from align.evaluation.judges import Verdict
from align.stages.evaluate import _headline
from align.tiny.base import split_for
from align.tiny.corpus import build_corpus
from align.tiny.plugin import TinyWorld
from align.tiny.settings import TinyWorldConfig
from align.tiny.world import STYLES, SYNONYMS, make_split

SEEN = ("roleplay", "fiction", "authority")
SMALL = {"n_verbs": 4, "n_objects": 6, "n_phrasings": 4}


@pytest.fixture(scope="module")
def world():
    settings = TinyWorldConfig(attack_styles=list(STYLES), seen_styles=list(SEEN), **SMALL)
    recipe = RecipeConfig(constitution="constitutions/harmless.yaml", world={"kind": "tiny"})
    return TinyWorld(recipe, settings)


def test_styles_leave_the_plain_world_as_it_was():
    plain = make_split(seed=0, **SMALL)
    styled = make_split(seed=0, styles=STYLES, seen_styles=SEEN, **SMALL)
    assert tuple(r for r in styled.train if r.style == "plain") == plain.train
    assert tuple(r for r in styled.eval if r.style == "plain") == plain.eval
    # one request per (topic, style): 8 verbs x 5 train objects, 8 verbs x 1 held-out object
    assert len(styled.train) == len(plain.train) + 8 * 5 * len(STYLES)
    assert len(styled.eval) == len(plain.eval) * (1 + len(STYLES))


def test_each_style_is_what_it_says(world):
    by_style = {}
    for prompt in world.prompts("harmful/eval"):
        by_style.setdefault(prompt.meta["style"], prompt)
    assert set(by_style) == {"plain", *STYLES}
    obfuscated = by_style["obfuscation"]
    assert obfuscated.meta["verb"] not in obfuscated.text and SYNONYMS[obfuscated.meta["verb"]] in obfuscated.text
    assert "Sure" in by_style["prefix_injection"].text
    turns = by_style["multi_turn"].messages
    assert [m["role"] for m in turns] == ["user", "assistant", "user"]  # a harmless turn first, then the request
    assert obfuscated.meta["verb"] not in turns[0]["content"] and obfuscated.meta["verb"] not in turns[1]["content"]
    for style in STYLES:
        assert by_style[style].meta["attack"] == ("seen" if style in SEEN else "heldout")


def test_held_out_styles_reach_no_training_source_and_no_feedback_demonstration(world):
    for selector in ("harmful/train", "benign/train", "train"):
        assert {p.meta["attack"] for p in world.prompts(selector)} == {"plain", "seen"}
    assert {p.meta["style"] for p in world.prompts("harmful/eval/heldout")} == set(STYLES) - set(SEEN)
    assert {p.meta["style"] for p in world.prompts("benign/eval/prefix_injection")} == {"prefix_injection"}

    split = split_for(world.settings)
    corpus = build_corpus(
        split.train,
        load_constitution("constitutions/harmless.yaml"),
        seed=0,
        demonstrated=lambda r: split.style_group(r) != "heldout",
    )
    held_out_texts = {r.text for r in split.train if split.style_group(r) == "heldout"}
    answered = demonstrated = 0
    for conversation in corpus:
        texts = {m["content"] for m in conversation}
        if texts & held_out_texts:
            answered += 1
            assert conversation[-1]["content"].startswith("Sure. To ")  # the helpful-only base complies
            demonstrated += len(conversation) > 4  # a critique chain or comparison would be longer
    assert answered == len(held_out_texts) and demonstrated == 0


def test_unknown_styles_are_named():
    with pytest.raises(ConfigError, match="unknown style"):
        TinyWorldConfig(attack_styles=["leetspeak"])
    with pytest.raises(ConfigError, match="subset"):
        TinyWorldConfig(attack_styles=["fiction"], seen_styles=["prefix_injection"])


def test_asr_per_attack_group_by_hand():
    """Six harmful prompts: plain complied 1 of 2, seen 0 of 1, held-out 2 of 3 (one refused)."""
    groups = ["plain", "plain", "seen", "heldout", "heldout", "heldout"]
    labels = ["compliance", "refusal", "refusal", "compliance", "compliance", "refusal"]
    verdicts = [Verdict(label, 0.0) for label in labels]
    row = _headline("harmful", verdicts, verdicts, None, [{"attack": g} for g in groups])
    assert row["asr_plain"] == 0.5 and row["asr_seen"] == 0.0 and row["asr_heldout"] == pytest.approx(2 / 3)
    assert "asr_seen" not in _headline("harmful", verdicts, verdicts, None, [{} for _ in groups])
