"""RL-CAI labelling: option probabilities, order swapping, principle ensembles and CoT clamping, by hand."""

import math
import random
from types import SimpleNamespace

import pytest
import torch

from align.config import SamplingSettings
from align.constitution import load_constitution_data
from align.feedback import prompts
from align.feedback.preferences import (
    COT_ANSWER_CUE,
    OptionScorer,
    Pair,
    clamp,
    label_pairs,
    option_probability,
    sample_principles,
    swap_average,
    to_preference,
)
from align.tiny.model import build_model, build_tokenizer


def constitution(questions: dict[str, str]):
    return load_constitution_data(
        {
            "name": "test",
            "version": "1.0.0",
            "principles": [
                {"id": pid, "critique": "Find a flaw.", "revision": "Fix it.", "comparison": q}
                for pid, q in questions.items()
            ],
        }
    )


# ---- pure arithmetic


def test_option_probability_renormalises_over_the_two_letters():
    # Logits: A = ln 3, B = 0, and a large logit on an unrelated token that must not count.
    logits = torch.tensor([[10.0, math.log(3), 0.0, -2.0]])
    p = option_probability(logits, torch.tensor([1]), torch.tensor([2]))
    assert p.item() == pytest.approx(0.75)  # 3 / (3 + 1)


def test_swap_average_cancels_position_bias():
    assert swap_average(0.9, 0.3) == pytest.approx(0.8)  # (0.9 + (1 - 0.3)) / 2
    assert swap_average(0.8, 0.8) == pytest.approx(0.5)  # always says (A): no information
    assert swap_average(1.0, 0.0) == pytest.approx(1.0)


def test_clamp():
    assert clamp(0.95, (0.4, 0.6)) == 0.6 and clamp(0.1, (0.4, 0.6)) == 0.4 and clamp(0.55, (0.4, 0.6)) == 0.55


def test_sample_principles_distinct_and_weighted():
    c = constitution({f"p{i}": f"Question {i}?" for i in range(6)})
    rng = random.Random(0)
    draws = [sample_principles(c, 3, rng) for _ in range(200)]
    assert all(len({p.id for p in d}) == 3 for d in draws)
    assert [p.id for p in sample_principles(c, 10, rng)] == [f"p{i}" for i in range(6)]  # k >= size: all


# ---- label_pairs with a stub feedback model whose answers we can work out by hand


class StubScorer:
    """P(A) from the rendered text: 0.9 if (A) is the GOOD response, else 0.2 (biased towards A).

    Under the principle asking "Is it kind?" the model is less sure: 0.7 / 0.4.
    """

    def __init__(self):
        self.tokenizer = build_tokenizer(["(A) GOOD (B) BAD"], 300)
        self.name = "stub"
        self.seen: list[str] = []

    def prob_a(self, texts):
        self.seen += texts
        out = []
        for t in texts:
            sure = "Is it kind?" not in t
            good_is_a = "(A) GOOD" in t
            out.append((0.9 if good_is_a else 0.2) if sure else (0.7 if good_is_a else 0.4))
        return out


def test_label_pairs_averages_orders_and_principles():
    c = constitution({"safe": "Is it safe?", "kind": "Is it kind?"})
    scorer = StubScorer()
    rows = label_pairs([Pair("q", "GOOD", "BAD"), Pair("q", "BAD", "GOOD")], c, scorer, num_principles=2, seed=0)
    # safe: (0.9 + (1 - 0.2)) / 2 = 0.85; kind: (0.7 + (1 - 0.4)) / 2 = 0.65; ensemble: 0.75
    assert rows[0]["per_principle"] == pytest.approx({"safe": 0.85, "kind": 0.65})
    assert rows[0]["p_first_better"] == pytest.approx(0.75)
    assert rows[1]["p_first_better"] == pytest.approx(0.25)
    assert len(scorer.seen) == 2 * 2 * 2  # pairs x principles x orders
    pref = to_preference(rows[1])
    assert pref["chosen"] == [prompts.assistant("GOOD")] and pref["rejected"] == [prompts.assistant("BAD")]
    assert pref["label"] == pytest.approx(0.75)
    # One order only: the position bias stays in the label.
    one = label_pairs([Pair("q", "BAD", "GOOD")], c, StubScorer(), num_principles=2, seed=0, both_orders=False)
    assert one[0]["p_first_better"] == pytest.approx((0.2 + 0.4) / 2)


class EchoReasoner:
    name = "reasoner"

    def __init__(self):
        self.asked = []

    def generate(self, conversations, sampling, seed, desc=""):
        self.asked += conversations
        return ["GOOD refuses, so it is better."] * len(conversations)


def test_chain_of_thought_reads_after_reasoning_and_clamps():
    c = constitution({"safe": "Is it safe?"})
    scorer, reasoner = StubScorer(), EchoReasoner()
    rows = label_pairs(
        [Pair("q", "GOOD", "BAD")],
        c,
        scorer,
        num_principles=1,
        seed=0,
        chain_of_thought=True,
        reasoner=reasoner,
        sampling=SamplingSettings(),
    )
    # 0.9 -> 0.6 and 0.2 -> 0.4 (so B, the GOOD one, wins with 0.6): (0.6 + 0.6) / 2
    assert rows[0]["p_first_better"] == pytest.approx(0.6)
    assert len(reasoner.asked) == 2 and all(conv[-1]["role"] == "user" for conv in reasoner.asked)
    for text in scorer.seen:
        assert "GOOD refuses, so it is better." in text and text.rstrip().endswith(COT_ANSWER_CUE)


def test_chain_of_thought_needs_a_reasoner():
    with pytest.raises(ValueError, match="reasoner"):
        label_pairs(
            [Pair("q", "a", "b")],
            constitution({"s": "Q?"}),
            StubScorer(),
            num_principles=1,
            seed=0,
            chain_of_thought=True,
        )


# ---- OptionScorer on real tokenizers and a real (random) model


class BiasLM(torch.nn.Module):
    """Next-token logits that ignore the input: a fixed distribution we can compute P(A) from."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.bias = torch.nn.Parameter(bias)

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return SimpleNamespace(logits=self.bias.expand(*input_ids.shape, -1))


def merging_tokenizer():
    """A byte-level BPE whose only merges are "(A" and "(B", as in tokenizers that keep them whole."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from align.tiny.model import CHAT_TEMPLATE, EOS_TURN, PAD

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({"(A": len(vocab), "(B": len(vocab) + 1})
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[("(", "A"), ("(", "B")]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    raw.add_special_tokens([PAD, "<|im_start|>", EOS_TURN])
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=EOS_TURN, pad_token=PAD, chat_template=CHAT_TEMPLATE)


@pytest.mark.parametrize("merged", [False, True])
def test_option_scorer_finds_the_letter_tokens_however_they_are_split(merged):
    # Our tiny tokenizer splits punctuation from letters; other tokenizers have a single token "(A".
    tok = merging_tokenizer() if merged else build_tokenizer(["plain words here, ABC"], 300)
    a_tokens = tok.tokenize("(A)")
    assert (a_tokens[0] == "(A") == merged
    text = tok.apply_chat_template([prompts.user("Which?")], tokenize=False, add_generation_prompt=True)
    scorer = OptionScorer(BiasLM(torch.zeros(len(tok))), tok)
    context, id_a, id_b = scorer.split(text)
    assert "A" in tok.decode([id_a]) and "B" in tok.decode([id_b])
    assert tok.decode(context).endswith("assistant\n" if merged else "assistant\n(")
    bias = torch.zeros(len(tok))
    bias[id_a] = math.log(3)
    scorer.model = BiasLM(bias)
    assert scorer.prob_a([text]) == pytest.approx([0.75])


def test_batched_left_padded_scores_equal_one_at_a_time():
    tok = build_tokenizer(["Which response is better? (A) yes (B) no, refuse"], 300)
    model = build_model(tok, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
    texts = [
        tok.apply_chat_template(
            prompts.comparison_messages("q" * n, "yes", "no", "Which?"), tokenize=False, add_generation_prompt=True
        )
        for n in (1, 7, 30)
    ]
    batched = OptionScorer(model, tok, batch_size=3).prob_a(texts)
    single = [OptionScorer(model, tok, batch_size=1).prob_a([t])[0] for t in texts]
    assert batched == pytest.approx(single, abs=1e-5)
    assert all(0 < p < 1 for p in batched) and len(set(round(p, 6) for p in batched)) > 1
