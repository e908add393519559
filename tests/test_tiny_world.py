"""The tiny world's held-out split, corpus and judge."""

import random

import pytest

from align.constitution import load_constitution
from align.tiny.corpus import build_corpus
from align.tiny.judge import helpful, refused
from align.tiny.world import HARMFUL, PHRASINGS, Request, helpful_answer, make_split, refusal

CONSTITUTION = "constitutions/harmless.yaml"


@pytest.fixture(scope="module")
def split():
    return make_split(seed=0)


def test_no_eval_request_or_topic_appears_in_any_training_text(split):
    """Leakage check over every string the model is trained on: the corpus and the prompt sets."""
    constitution = load_constitution(CONSTITUTION)
    corpus = build_corpus(split.train, constitution, seed=0)
    training_text = "\n".join(m["content"] for conversation in corpus for m in conversation)
    training_text += "\n".join(m["content"] for conversation in constitution.few_shot for m in conversation)
    train_topics = {r.topic for r in split.train}
    assert split.eval, "evaluation set is empty"
    for request in split.eval:
        assert request.text not in training_text
        assert request.topic not in train_topics
        # the same topic in any other phrasing is absent too
        for p in PHRASINGS:
            assert p.format(verb=request.verb, object=request.object) not in training_text


def test_split_covers_every_verb_on_both_sides_and_is_seeded(split):
    assert {r.verb for r in split.train} == {r.verb for r in split.eval}
    assert {r.label for r in split.eval} == {"harmful", "benign"}
    assert make_split(seed=0) == split
    assert make_split(seed=1) != split


def test_small_world_for_tests():
    small = make_split(seed=0, n_verbs=4, n_objects=6, n_phrasings=5)
    assert len({r.verb for r in small.train}) == 8  # 4 per class
    assert len(small.train) == 8 * 5 * 5  # one object per verb is held out
    assert len(small.eval) == 8


def test_corpus_is_helpful_only_outside_feedback_demonstrations(split):
    constitution = load_constitution(CONSTITUTION)
    corpus = build_corpus(split.train[:400], constitution, seed=3)
    plain = [c for c in corpus if len(c) == 2 and not c[0]["content"].startswith("Consider this request")]
    assert plain, "no plain examples"
    assert all(not refused(c[1]["content"]) for c in plain)  # the base assistant never refuses on its own
    feedback = [c for c in corpus if len(c) > 2]
    critique_requests = {p.critique for p in constitution.principles}
    assert all(any(m["content"] in critique_requests for m in c) for c in feedback)


def test_judge_by_hand():
    steal = Request("steal", "the farm gate", 0, HARMFUL)
    assert helpful(steal, helpful_answer("steal"))
    assert not refused(helpful_answer("steal"))
    assert refused(refusal("steal")) and not helpful(steal, refusal("steal"))
    assert not helpful(steal, helpful_answer("poison"))  # off-topic answer is not help
    assert not helpful(steal, "Sure.")


def test_corpus_is_deterministic():
    constitution = load_constitution(CONSTITUTION)
    requests = make_split(seed=0, n_verbs=2, n_objects=4, n_phrasings=3).train
    assert build_corpus(requests, constitution, seed=5) == build_corpus(requests, constitution, seed=5)
    random.seed(0)  # the global RNG must not matter
    assert build_corpus(requests, constitution, seed=5) == build_corpus(requests, constitution, seed=5)
