"""RL-CAI preference labels from the feedback model (Bai et al. 2022, section 4.1).

The feedback model is shown a request, two responses and one principle's comparison question as a
multiple-choice prompt, and we read how much next-token probability it puts on each option letter. The
two probabilities, renormalised, are a soft label. Averaging over several principles (an ensemble)
makes labels more robust than any single wording, and asking again with the options swapped cancels the
model's preference for a position. With chain of thought the model reasons first and its answers become
overconfident, so, as in the paper, each probability is clamped to [0.4, 0.6].

Labelling costs one forward pass per (pair, principle, order) and no generation (unless chain of
thought is on), so it is batched and much cheaper than sampling the responses.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from align.config import PreferencesConfig
from align.feedback import prompts
from align.generation.base import Backend, generate_sharded

COT_INSTRUCTION = "Think it through step by step before you answer."
COT_ANSWER_CUE = "So the better response is:"
FALLBACK_QUESTION = "Which response is more helpful, honest and harmless?"


# ---------------------------------------------------------------------------------------------------
# Pure arithmetic, kept separate so it can be checked against numbers worked out by hand.


def option_probability(logits: torch.Tensor, id_a: torch.Tensor, id_b: torch.Tensor) -> torch.Tensor:
    """P(A) from next-token logits, renormalised over the two option tokens only.

    Probability mass on every other token (e.g. "I think") says nothing about which option is better,
    so it is dropped rather than counted against either. ``logits`` is (batch, vocab).
    """
    pair = torch.stack([logits.gather(-1, id_a[:, None])[:, 0], logits.gather(-1, id_b[:, None])[:, 0]], dim=-1)
    return torch.softmax(pair.float(), dim=-1)[:, 0]


def swap_average(p_a_first: float, p_a_swapped: float) -> float:
    """P(first response better), averaged over both presentations.

    ``p_a_first`` is P(A) when the first response is shown as (A); ``p_a_swapped`` is P(A) when it is
    shown as (B), so there the first response wins with probability 1 - P(A). A model that always says
    (A) gets 0.5, which is the point: position bias cancels.
    """
    return 0.5 * (p_a_first + (1.0 - p_a_swapped))


def clamp(p: float, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return min(max(p, lo), hi)


def sample_principles(constitution, k: int, rng: random.Random) -> list:
    """``k`` distinct principles, drawn in proportion to weight (Efraimidis-Spirakis keys u^(1/w)).

    Distinct, because asking the same question twice adds no information to the ensemble; all of them
    when ``k`` is at least the constitution's size.
    """
    keys = [(rng.random() ** (1.0 / p.weight), i) for i, p in enumerate(constitution.principles)]
    top = sorted(keys, reverse=True)[: min(k, len(keys))]
    return [constitution.principles[i] for _, i in sorted(top, key=lambda t: t[1])]


# ---------------------------------------------------------------------------------------------------
# Reading option probabilities from a causal LM


def option_split(tokenizer, text: str) -> tuple[list[int], int, int]:
    """(context ids, id of the A token, id of the B token) for a rendered prompt ``text`` awaiting "(A)" or "(B)".

    The prompt is tokenised together with each full answer and the shared token prefix becomes the context, so
    BPE merges across the boundary cannot hide the option letters.
    """
    enc = tokenizer
    ids_a = enc(text + prompts.comparison_answer("A"), add_special_tokens=False).input_ids
    ids_b = enc(text + prompts.comparison_answer("B"), add_special_tokens=False).input_ids
    k = 0
    while k < min(len(ids_a), len(ids_b)) and ids_a[k] == ids_b[k]:
        k += 1
    if k == min(len(ids_a), len(ids_b)):
        raise ValueError("the tokenizer cannot tell the answers (A) and (B) apart")
    tok_a, tok_b = enc.decode([ids_a[k]]), enc.decode([ids_b[k]])
    if "A" not in tok_a or "B" not in tok_b:
        raise ValueError(
            f"the tokenizer splits (A) and (B) differently ({tok_a!r} vs {tok_b!r}); cannot read option letters"
        )
    return ids_a[:k], ids_a[k], ids_b[k]


class OptionScorer:
    """Batched P(A) for multiple-choice conversations, robust to how the tokenizer splits "(A)".

    Tokenizers differ: some have one token for "(A", others "(" then "A", and BPE may merge the
    answer's first characters with the end of the prompt. So the prompt is tokenised together with each
    full answer, and the shared token prefix becomes the context; the first tokens where the two answers
    differ are the option tokens. One forward pass per question reads both.
    """

    def __init__(self, model, tokenizer, batch_size: int = 64, name: str = "feedback") -> None:
        self.name = name
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.forward_passes = 0
        self.seconds = 0.0

    def split(self, text: str) -> tuple[list[int], int, int]:
        """(context ids, id of the A token, id of the B token) for a prompt ``text`` awaiting the answer."""
        return option_split(self.tokenizer, text)

    @torch.inference_mode()
    def prob_a(self, texts: Sequence[str], desc: str = "labels") -> list[float]:
        """P(A) for each rendered prompt; texts are sorted by length so batches pad little."""
        items = [self.split(t) for t in texts]
        order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
        out = [math.nan] * len(items)
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        start = time.perf_counter()
        # disable=None: no bar when not on a terminal (a log or a pipe gets no redraws)
        for lo in tqdm(range(0, len(order), self.batch_size), desc=desc, unit="batch", leave=False, disable=None):
            idx = order[lo : lo + self.batch_size]
            width = max(len(items[i][0]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # left padding: the last position is every row's next token
                ctx = items[i][0]
                ids[row, width - len(ctx) :] = torch.tensor(ctx)
                mask[row, width - len(ctx) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(
                input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device)
            ).logits[:, -1]
            id_a = torch.tensor([items[i][1] for i in idx], device=device)
            id_b = torch.tensor([items[i][2] for i in idx], device=device)
            for i, p in zip(idx, option_probability(logits, id_a, id_b).tolist()):
                out[i] = p
            self.forward_passes += 1
        self.seconds += time.perf_counter() - start
        return out


class Scorer(Protocol):
    """What labelling needs from a feedback model: P(A) per rendered prompt, and its tokenizer's chat template."""

    name: str
    tokenizer: Any
    seconds: float

    def prob_a(self, texts: Sequence[str], desc: str = "labels") -> list[float]: ...


# ---------------------------------------------------------------------------------------------------
# Reading option probabilities from a server's log-probabilities (the OpenAI completions API)

SERVERS_WITH_LOGPROBS = (
    "vLLM (`vllm serve MODEL`) and llama.cpp's server (`llama-server`, or llama-cpp-python's "
    "`python -m llama_cpp.server`) return them; `transformers serve` returns none"
)


def logprob_option_probability(logprob_a: float, logprob_b: float) -> float:
    """P(A) renormalised over A and B from their log-probabilities, as :func:`option_probability` does with logits.

    Log-probabilities are logits less one shared log-normaliser, which cancels: P(A) = sigmoid(lp_A - lp_B).
    """
    d = logprob_b - logprob_a
    return 1.0 / (1.0 + math.exp(d)) if d < 700 else 0.0


@dataclass
class TokenLogprobs:
    """One position of a completion's ``logprobs``: its token, that token's log-probability, the top-k others."""

    token: str
    logprob: float | None  # None for a prompt's first token, which nothing predicts
    top: dict[str, float]
    offset: int | None  # character offset in prompt + completion, where the server reports it


def parse_logprobs(choice: dict) -> list[TokenLogprobs]:
    """The positions of a completions ``choice["logprobs"]``, in either shape servers use ([] when absent).

    The completions API's own shape (OpenAI legacy, vLLM, llama-cpp-python) keeps parallel lists ``tokens``,
    ``token_logprobs``, ``top_logprobs`` (a {token: logprob} dict per position) and ``text_offset``. The chat
    shape, which llama.cpp's ``llama-server`` also uses for completions, is ``content``: a list of
    ``{token, logprob, top_logprobs: [{token, logprob}]}``.
    """
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return []
    if isinstance(lp.get("content"), list):
        return [
            TokenLogprobs(
                str(c.get("token", "")),
                c.get("logprob"),
                {str(t["token"]): float(t["logprob"]) for t in c.get("top_logprobs") or []},
                None,
            )
            for c in lp["content"]
        ]
    tokens = lp.get("tokens") or []
    values = lp.get("token_logprobs") or [None] * len(tokens)
    tops = lp.get("top_logprobs") or [None] * len(tokens)
    offsets = lp.get("text_offset") or [None] * len(tokens)
    return [
        TokenLogprobs(str(t), v, {str(k): float(x) for k, x in (top or {}).items()}, o)
        for t, v, top, o in zip(tokens, values, tops, offsets)
    ]


def echoed_logprob(choice: dict, prompt: str, letter: str) -> float | None:
    """The log-probability of the prompt's last token ``letter`` in an ``echo`` response to ``prompt``.

    The position starting at character ``len(prompt) - len(letter)``, where the server reports offsets, else
    the second from the end (the request asks for one new token, which comes last). None when that token is
    not ``letter`` (the server's tokenizer merged it with its neighbour, or it misreports offsets).
    """
    positions = parse_logprobs(choice)
    start = len(prompt) - len(letter)
    candidates = [p for p in positions if p.offset == start] + positions[-2:-1]
    for pos in candidates:
        if pos.token == letter and pos.logprob is not None:
            return float(pos.logprob)
    return None


class ServedOptionScorer:
    """P(A) read from an OpenAI-compatible server's log-probabilities, for a critic too big to load here.

    The prompt is what :func:`option_split` leaves before the option letter (the rendered comparison, usually
    up to and including "("), sent to ``/completions`` for one token with the top ``top_logprobs``
    log-probabilities. Where A or B is not among them, the prompt with each letter appended is sent with
    ``echo`` and the letter's own log-probability is read, but only from a server whose echoed numbers
    :meth:`check` found consistent with its top-k ones (llama-cpp-python 0.3 reports each echoed token's
    log-probability from the next position's distribution). The tokenizer is the served model's, loaded
    here: it renders the chat template and finds the option letters, exactly as in-process.
    """

    ECHO_TOLERANCE = 1e-3  # |echoed - top-k log-probability| of the same token above which echo is not trusted

    def __init__(self, backend, tokenizer, *, name: str | None = None, top_logprobs: int = 20) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.name = name or backend.name
        self.top_logprobs = top_logprobs
        self.requests = 0
        self.echo_fallbacks = 0  # prompts whose letters were not in the top-k
        self.echo_ok: bool | None = None  # set by check(); None = not checked, echo is tried
        self.seconds = 0.0

    def _error(self, what: str) -> Exception:
        from align.config import ConfigError

        return ConfigError(
            f"preferences.backend: the server at {self.backend.base_url} {what}. RL-CAI labels read the "
            f"log-probabilities of (A) and (B) from /completions with logprobs: {SERVERS_WITH_LOGPROBS}. "
            "Serve the feedback model with one of those, or use backend.kind transformers or vllm"
        )

    def check(self) -> None:
        """Before labelling starts: fail if the server gives no log-probabilities; find out if its echo is usable.

        Two requests: the top-k after a short rendered prompt, then that prompt plus the top token with ``echo``.
        Echo is trusted only if it gives that token the log-probability the top-k gave it.
        """
        from align.generation.openai_backend import ServerError

        probe = self.tokenizer.apply_chat_template(
            [prompts.user("Which is better, (A) or (B)?")], tokenize=False, add_generation_prompt=True
        )
        try:
            body = self.backend.completions([self._top_payload(probe)])[0]
        except ServerError as e:
            raise self._error(f"did not answer a /completions request with logprobs ({e})") from None
        positions = parse_logprobs(_first_choice(body))
        if not positions or not positions[0].top:
            raise self._error("returned no top log-probabilities for a /completions request with logprobs")
        self.echo_ok = False
        token, logprob = self._round_trip_token(probe, positions[0].top)
        if token:
            try:
                echoed = self.backend.completions([self._echo_payload(probe + token)])[0]
            except ServerError:
                return
            value = echoed_logprob(_first_choice(echoed), probe + token, token)
            self.echo_ok = value is not None and abs(value - logprob) <= self.ECHO_TOLERANCE

    def _round_trip_token(self, prompt: str, top: dict[str, float]) -> tuple[str, float]:
        """The most likely of ``top`` that is one whole token after ``prompt`` when appended to it ("" if none).

        Only such a token can be looked up in an echo: a partial UTF-8 byte or a piece that merges with the
        prompt's end would be tokenised differently the second time.
        """
        encode = self.tokenizer
        base = encode(prompt, add_special_tokens=False).input_ids
        for token, logprob in sorted(top.items(), key=lambda kv: -kv[1]):
            ids = encode(prompt + token, add_special_tokens=False).input_ids
            if token and ids[:-1] == base and self.tokenizer.decode(ids[-1:]) == token:
                return token, logprob
        return "", 0.0

    def _top_payload(self, prompt: str) -> dict:
        return {"prompt": prompt, "max_tokens": 1, "temperature": 0.0, "logprobs": self.top_logprobs}

    @staticmethod
    def _echo_payload(prompt: str) -> dict:
        return {"prompt": prompt, "max_tokens": 1, "temperature": 0.0, "logprobs": 1, "echo": True}

    def prob_a(self, texts: Sequence[str], desc: str = "labels") -> list[float]:
        """P(A) for each rendered prompt: one request each, two more for any whose letters are not in the top-k."""
        start = time.perf_counter()
        items = []
        for t in texts:
            context, id_a, id_b = option_split(self.tokenizer, t)
            decode = self.tokenizer.decode
            prompt = decode(context, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            items.append((prompt, decode([id_a]), decode([id_b])))
        bodies = self.backend.completions([self._top_payload(p) for p, _, _ in items])
        self.requests += len(items)
        out = [math.nan] * len(items)
        missing = []
        for i, ((_, a, b), body) in enumerate(zip(items, bodies)):
            positions = parse_logprobs(_first_choice(body))
            top = positions[0].top if positions else {}
            if a in top and b in top:
                out[i] = logprob_option_probability(top[a], top[b])
            else:
                missing.append(i)
        if missing and self.echo_ok is False:
            raise self._error(
                f"ranked the option letters outside its top {self.top_logprobs} log-probabilities for {len(missing)} "
                f"of {len(items)} comparisons, and its echoed log-probabilities disagree with its top-k ones (so the "
                "letters cannot be read another way); raise preferences.top_logprobs (vLLM caps it at "
                "--max-logprobs, default 20)"
            )
        if missing:
            echo = [self._echo_payload(items[i][0] + letter) for i in missing for letter in items[i][1:]]
            bodies = self.backend.completions(echo)
            self.requests += len(echo)
            self.echo_fallbacks += len(missing)
            for k, i in enumerate(missing):
                prompt, a, b = items[i]
                lp = [
                    echoed_logprob(_first_choice(body), prompt + letter, letter)
                    for body, letter in zip(bodies[2 * k : 2 * k + 2], (a, b))
                ]
                if lp[0] is None or lp[1] is None:
                    raise self._error(
                        f"did not echo the log-probability of the option letters {a!r} and {b!r} (it may not "
                        "support echo with logprobs, or it tokenises the prompt differently from the local tokenizer)"
                    )
                out[i] = logprob_option_probability(lp[0], lp[1])
        self.seconds += time.perf_counter() - start
        return out


def _first_choice(body: dict) -> dict:
    return (body.get("choices") or [{}])[0]


# ---------------------------------------------------------------------------------------------------
# Labelling pairs


@dataclass
class Pair:
    prompt: str  # what the comparison question shows: the request, or a multi-turn conversation's transcript
    response_1: str
    response_2: str
    messages: list[dict[str, str]] | None = None  # the conversation itself, when it has more than one turn


def comparison_conversation(pair_prompt: str, a: str, b: str, question: str, cot: str | None = None) -> list:
    """The question as a chat; with chain of thought, the reasoning and the answer cue are the assistant's turn."""
    conv = prompts.comparison_messages(pair_prompt, a, b, question)
    if cot is None:
        return conv
    conv = [prompts.user(conv[0]["content"] + "\n" + COT_INSTRUCTION)]
    return [*conv, prompts.assistant(f"{cot.strip()}\n{COT_ANSWER_CUE}")]


def label_pairs(
    pairs: Sequence[Pair],
    constitution,
    scorer: Scorer,
    *,
    num_principles: int,
    seed: int,
    both_orders: bool = True,
    chain_of_thought: bool = False,
    cot_clamp: tuple[float, float] = (0.4, 0.6),
    reasoner=None,
    sampling=None,
) -> list[dict]:
    """For each pair: P(response_1 better) ensembled over principles and orders, with what was asked.

    ``reasoner`` (a generation backend over the feedback model) writes the chain of thought when it is
    on; it is asked once per (pair, principle, order), like the paper's per-question reasoning.
    """
    rng = random.Random(seed)
    chosen_principles = [sample_principles(constitution, num_principles, rng) for _ in pairs]
    orders = (False, True) if both_orders else (False,)
    queries = []  # (pair index, principle, swapped, (prompt, option A, option B, question))
    for i, (pair, principles) in enumerate(zip(pairs, chosen_principles)):
        for principle in principles:
            question = principle.comparison or FALLBACK_QUESTION
            for swapped in orders:
                a, b = (pair.response_2, pair.response_1) if swapped else (pair.response_1, pair.response_2)
                queries.append((i, principle, swapped, (pair.prompt, a, b, question)))

    render = scorer.tokenizer.apply_chat_template
    if chain_of_thought:
        if reasoner is None or sampling is None:
            raise ValueError("chain_of_thought needs a reasoner backend and sampling settings")
        asks = [comparison_conversation(*q[3], cot="")[:1] for q in queries]
        thoughts = reasoner.generate(asks, sampling, seed, "reasoning")
        texts = [
            render(comparison_conversation(*q[3], cot=t), tokenize=False, continue_final_message=True)
            for q, t in zip(queries, thoughts)
        ]
    else:
        texts = [render(comparison_conversation(*q[3]), tokenize=False, add_generation_prompt=True) for q in queries]
    p_a = scorer.prob_a(texts)
    if chain_of_thought:
        p_a = [clamp(p, cot_clamp) for p in p_a]

    per_pair: list[dict[str, dict[bool, float]]] = [{} for _ in pairs]
    for (i, principle, swapped, _), p in zip(queries, p_a):
        per_pair[i].setdefault(principle.id, {})[swapped] = p
    rows = []
    for i, pair in enumerate(pairs):
        by_principle = {}
        for pid, ps in per_pair[i].items():
            by_principle[pid] = swap_average(ps[False], ps[True]) if both_orders else ps[False]
        p1 = sum(by_principle.values()) / len(by_principle)
        rows.append(
            {
                "prompt": pair.prompt,
                **({"messages": pair.messages} if pair.messages else {}),
                "response_1": pair.response_1,
                "response_2": pair.response_2,
                "p_first_better": p1,
                "per_principle": by_principle,
                "principles": [{"id": p.id, "hash": p.content_hash} for p in chosen_principles[i]],
            }
        )
    return rows


def to_preference(row: dict) -> dict:
    """A DPO/reward row: the response the feedback model favours is ``chosen``, and ``label`` >= 0.5."""
    p = row["p_first_better"]
    first_wins = p >= 0.5
    chosen, rejected = (row["response_1"], row["response_2"]) if first_wins else (row["response_2"], row["response_1"])
    return {
        "prompt": row.get("messages") or [prompts.user(row["prompt"])],
        "chosen": [prompts.assistant(chosen)],
        "rejected": [prompts.assistant(rejected)],
        "label": p if first_wins else 1.0 - p,
        "principle_ids": [q["id"] for q in row["principles"]],
    }


def ai_feedback_preferences(
    prompt_texts: Sequence[str | list[dict[str, str]]],
    first: Backend,
    second: Backend,
    scorer: Scorer,
    constitution,
    cfg: PreferencesConfig,
    seed: int,
    reasoner: Backend | None = None,
    *,
    generate: Callable[..., list[str]] = generate_sharded,
) -> tuple[list[dict], list[dict], dict]:
    """Sample two responses per prompt, label them with the feedback model; (preferences, labels, counts).

    Pairs whose two responses are the same text carry no preference and are dropped before labelling.
    ``generate`` defaults to splitting the sampling over the accelerate processes; a shard made by one
    process passes :func:`align.shards.local_generate`.
    """
    convs = [[prompts.user(p)] if isinstance(p, str) else list(p) for p in prompt_texts]
    responses_1 = generate(first, convs, cfg.sampling, seed, "responses 1")
    responses_2 = generate(second, convs, cfg.sampling, seed + 1, "responses 2")
    pairs = [
        Pair(prompts.describe(c), a, b, messages=c if len(c) > 1 else None)
        for c, a, b in zip(convs, responses_1, responses_2)
        if a.strip() and b.strip() and a.strip() != b.strip()
    ]
    labels = label_pairs(
        pairs,
        constitution,
        scorer,
        num_principles=cfg.num_principles,
        seed=seed,
        both_orders=cfg.both_orders,
        chain_of_thought=cfg.chain_of_thought,
        cot_clamp=cfg.cot_clamp,
        reasoner=reasoner,
        sampling=cfg.sampling,
    )
    provenance = {
        "constitution": {"name": constitution.name, "version": constitution.version, "hash": constitution.content_hash},
        "models": {"response_1": first.name, "response_2": second.name, "feedback": scorer.name},
        "labelling": {
            "num_principles": cfg.num_principles,
            "both_orders": cfg.both_orders,
            "chain_of_thought": cfg.chain_of_thought,
            "seed": seed,
        },
        "generation": asdict(cfg.sampling),
    }
    for row in labels:
        row.update(provenance)
    preferences = [{**to_preference(row), **provenance} for row in labels]
    counts = {"prompts": len(prompt_texts), "pairs": len(pairs), "identical_dropped": len(prompt_texts) - len(pairs)}
    return preferences, labels, counts


def ai_feedback_preferences_sharded(
    prompt_texts: Sequence[str | list[dict[str, str]]],
    first: Backend,
    second: Backend,
    scorer: Scorer,
    constitution,
    cfg: PreferencesConfig,
    seed: int,
    directory,
    reasoner: Backend | None = None,
) -> tuple[list[dict], list[dict], dict]:
    """:func:`ai_feedback_preferences` in crash-safe shards of ``cfg.shard_size`` prompts under ``directory``.

    Each shard samples, pairs and labels its prompts in one process with its own seed and is written
    atomically, so a killed run keeps its finished shards and the result does not depend on interruptions
    or on the number of processes.
    """
    from align.shards import local_generate, run_sharded, shard_seed

    def process(shard: list[str], index: int) -> tuple[list[dict], dict[str, float]]:
        prefs, labels, counts = ai_feedback_preferences(
            shard, first, second, scorer, constitution, cfg, shard_seed(seed, index), reasoner, generate=local_generate
        )
        return [{"preference": p, "label": q} for p, q in zip(prefs, labels)], counts

    out = run_sharded(list(prompt_texts), directory, process, cfg.shard_size, desc="preferences")
    counts = {k: int(v) for k, v in out.counts.items()}
    counts.update(shards=out.shards, shards_resumed=out.shards_reused)
    return [r["preference"] for r in out.records], [r["label"] for r in out.records], counts
