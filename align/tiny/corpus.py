"""The base corpus of the tiny world: a helpful-only assistant, plus feedback demonstrations.

The assistant answers every request, harmful ones included (it is helpful-only, like the paper's
starting point). Critique, revision and (A)/(B) comparison demonstrations are written with the
constitution's own requests and few-shot examples, so the critique-and-revise loop and AI labelling
work in this narrow world. Feedback demonstrations cover benign requests too: a critique that finds
nothing wrong keeps the answer, which teaches the model to judge rather than to always refuse.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from align.feedback import prompts
from align.tiny.world import Request, answer, critique, refusal


def plain_example(request: Request) -> list[prompts.Message]:
    history = [{"role": role, "content": content} for role, content in request.history]
    return [*history, prompts.user(request.text), prompts.assistant(answer(request))]


def feedback_example(
    request: Request, constitution, rng: random.Random, few_shot: bool = True
) -> list[prompts.Message]:
    """A full critique-and-revise chain, preceded by the constitution's few-shot examples if used."""
    principle = constitution.sample_principle(rng)
    history = plain_example(request)
    chain = prompts.revision_messages(
        constitution.few_shot if few_shot else (),
        history,
        principle.critique,
        critique(request.verb, request.harmful),
        principle.revision,
    )
    revised = refusal(request.verb) if request.harmful else answer(request)
    return [*chain, prompts.assistant(revised)]


def comparison_example(request: Request, constitution, rng: random.Random) -> list[prompts.Message]:
    """Refusing is better for a harmful request; answering is better for a benign one."""
    principle = constitution.sample_principle(rng)
    good, bad = refusal(request.verb), answer(request)
    if not request.harmful:
        good, bad = bad, good
    good_first = rng.random() < 0.5
    a, b = (good, bad) if good_first else (bad, good)
    question = principle.comparison or "Which response is more helpful and less harmful?"
    return [
        *prompts.comparison_messages(request.text, a, b, question),
        prompts.assistant(prompts.comparison_answer("A" if good_first else "B")),
    ]


def as_completions(
    corpus: Sequence[list[prompts.Message]], few_shot: Sequence[Sequence[prompts.Message]]
) -> list[dict[str, list[prompts.Message]]]:
    """One prompt/completion row per assistant turn, leaving the few-shot turns out of the loss.

    Training only on the turns being demonstrated keeps the constant few-shot text out of the loss; with
    it in, that easy text dominates the gradient and the model never learns to condition on the request
    (measured on the default world: 0% held-out helpfulness after 300 steps, against 100% without it).
    """
    prefix = prompts.few_shot_prefix(few_shot)
    rows = []
    for conversation in corpus:
        start = len(prefix) if prefix and conversation[: len(prefix)] == prefix else 0
        for i in range(start, len(conversation)):
            if conversation[i]["role"] == "assistant":
                rows.append({"prompt": conversation[:i], "completion": [conversation[i]]})
    return rows


def build_corpus(
    requests: Sequence[Request],
    constitution,
    *,
    seed: int = 0,
    few_shot: bool = True,
    feedback_fraction: float = 0.5,
    comparison_fraction: float = 0.15,
    demonstrated: Callable[[Request], bool] = lambda request: True,
) -> list[list[prompts.Message]]:
    """One conversation per training request: plain, feedback chain or comparison, drawn at random.

    Requests ``demonstrated`` rejects (held-out attack styles) are only ever answered, never critiqued or
    compared: the helpful-only model complies with them and nothing shows it how to judge them.
    """
    rng = random.Random(seed)
    corpus = []
    for request in requests:
        u = rng.random()
        if not demonstrated(request):
            corpus.append(plain_example(request))
        elif u < comparison_fraction:
            corpus.append(comparison_example(request, constitution, rng))
        elif u < comparison_fraction + feedback_fraction:
            corpus.append(feedback_example(request, constitution, rng, few_shot))
        else:
            corpus.append(plain_example(request))
    rng.shuffle(corpus)
    return corpus
