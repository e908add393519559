"""RL-CAI labels from a served critic: P(A) from log-probabilities, both response shapes, echo fallback, errors."""

import math

import pytest
import torch
from helpers.logprob_server import LogprobServer

from align.config import BackendSettings, ConfigError
from align.feedback import prompts
from align.feedback.preferences import (
    OptionScorer,
    ServedOptionScorer,
    echoed_logprob,
    logprob_option_probability,
    option_probability,
    parse_logprobs,
)
from align.generation.openai_backend import OpenAIBackend
from align.tiny.model import build_model, build_tokenizer

# ---- arithmetic, by hand


def test_logprob_probability_is_a_sigmoid_of_the_difference():
    # P(A) = e^-0.5 / (e^-0.5 + e^-1.5) = 1 / (1 + e^-1) = sigmoid(1.0)
    assert logprob_option_probability(-0.5, -1.5) == pytest.approx(0.7310586, abs=1e-7)
    assert logprob_option_probability(-1.5, -0.5) == pytest.approx(1 - 0.7310586, abs=1e-7)
    assert logprob_option_probability(math.log(0.3), math.log(0.1)) == pytest.approx(0.75)  # 0.3 / (0.3 + 0.1)
    assert logprob_option_probability(0.0, -1000.0) == 1.0 and logprob_option_probability(-1000.0, 0.0) == 0.0


def test_logprobs_agree_with_logits_renormalised():
    logits = torch.tensor([[2.0, 0.5, -1.0, 3.0]])
    lp = torch.log_softmax(logits, -1)[0]
    in_process = option_probability(logits, torch.tensor([1]), torch.tensor([2]))[0].item()
    assert logprob_option_probability(lp[1].item(), lp[2].item()) == pytest.approx(in_process, abs=1e-7)


# ---- parsing both response shapes


def test_parse_completions_shape():
    choice = {
        "logprobs": {
            "tokens": ["(", "A"],
            "token_logprobs": [None, -0.5],
            "top_logprobs": [None, {"A": -0.5, "B": -1.5}],
            "text_offset": [0, 1],
        }
    }
    first, second = parse_logprobs(choice)
    assert (first.token, first.logprob, first.top, first.offset) == ("(", None, {}, 0)
    assert (second.token, second.logprob, second.top, second.offset) == ("A", -0.5, {"A": -0.5, "B": -1.5}, 1)


def test_parse_chat_shape_and_absent_logprobs():
    choice = {
        "logprobs": {
            "content": [
                {
                    "token": "A",
                    "logprob": -0.5,
                    "top_logprobs": [{"token": "A", "logprob": -0.5}, {"token": "B", "logprob": -1.5}],
                }
            ]
        }
    }
    (only,) = parse_logprobs(choice)
    assert (only.token, only.logprob, only.top, only.offset) == ("A", -0.5, {"A": -0.5, "B": -1.5}, None)
    assert parse_logprobs({"text": "A"}) == [] and parse_logprobs({"logprobs": None}) == []


def test_echoed_logprob_reads_the_letter_not_the_generated_token():
    prompt = "Pick (A"
    body = {
        "logprobs": {
            "tokens": ["Pick", " (", "A", ")"],  # the last one is the token the server generated
            "token_logprobs": [None, -2.0, -0.25, -0.1],
            "top_logprobs": [None, {}, {}, {}],
            "text_offset": [0, 4, 6, 7],
        }
    }
    assert echoed_logprob(body, prompt, "A") == -0.25
    del body["logprobs"]["text_offset"]  # no offsets: second from the end
    assert echoed_logprob(body, prompt, "A") == -0.25
    body["logprobs"]["tokens"][2] = "xA"  # the server merged the letter with its neighbour
    assert echoed_logprob(body, prompt, "A") is None


# ---- against a loopback server computing real log-probabilities from the same weights


@pytest.fixture(scope="module")
def critic():
    torch.manual_seed(0)
    tok = build_tokenizer(["Which response is better? (A) yes, fix the bike (B) no, I refuse. Pick one"], 300)
    model = build_model(tok, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.3)
    texts = [
        tok.apply_chat_template(
            prompts.comparison_messages(q, a, b, "Which response is better?"),
            tokenize=False,
            add_generation_prompt=True,
        )
        for q, a, b in [("fix the bike", "yes", "no"), ("refuse", "I refuse", "yes, fix"), ("pick", "one", "no one")]
    ]
    return model, tok, texts, OptionScorer(model, tok).prob_a(texts)


def served(server: LogprobServer, tok, **kw) -> ServedOptionScorer:
    return ServedOptionScorer(OpenAIBackend(BackendSettings(kind="openai", base_url=server.url), "critic"), tok, **kw)


@pytest.mark.parametrize(
    ("shape", "k", "echo"), [("completions", 300, False), ("chat", 300, False), ("completions", 2, True)]
)
def test_served_labels_equal_in_process(critic, shape, k, echo):
    model, tok, texts, expected = critic
    server = LogprobServer(model, tok, shape=shape)
    try:
        scorer = served(server, tok, top_logprobs=k)
        scorer.check()
        got = scorer.prob_a(texts)
    finally:
        server.close()
    assert got == pytest.approx(expected, abs=1e-5)
    assert len(set(round(p, 4) for p in got)) > 1  # the prompts differ, so do their labels
    assert scorer.echo_fallbacks == (len(texts) if echo else 0)
    assert scorer.echo_ok is (shape == "completions")  # the chat shape has no echo
    asks = server.requests[2:]  # after the two probes; requests are concurrent, so only the first pass comes first
    assert all(r["max_tokens"] == 1 and r["model"] == "critic" for r in asks)
    assert all(r["prompt"].endswith("assistant\n(") for r in asks[: len(texts)])
    if echo:  # two more requests per prompt, each ending in its letter
        assert sorted(r["prompt"][-2:] for r in asks[len(texts) :]) == ["(A"] * len(texts) + ["(B"] * len(texts)
        assert all(r["echo"] for r in asks[len(texts) :])


def test_a_server_without_logprobs_fails_at_start_naming_it_and_what_works(critic):
    model, tok, _, _ = critic
    server = LogprobServer(model, tok, logprobs=False)
    try:
        scorer = served(server, tok)
        with pytest.raises(ConfigError) as info:
            scorer.check()
    finally:
        server.close()
    message = str(info.value)
    assert server.url in message and "vLLM" in message and "llama.cpp" in message
    assert "transformers serve` returns none" in message and len(server.requests) == 1


def test_a_server_whose_echo_is_shifted_is_not_trusted(critic):
    model, tok, texts, expected = critic
    server = LogprobServer(model, tok, echo_shift=True)  # as llama-cpp-python 0.3.36
    try:
        scorer = served(server, tok, top_logprobs=2)
        scorer.check()
        assert scorer.echo_ok is False and server.requests[1]["echo"]  # it was asked, and answered off by one
        with pytest.raises(ConfigError, match=r"outside its top 2 .* raise preferences.top_logprobs"):
            scorer.prob_a(texts)
        scorer.top_logprobs = len(tok)  # every token: the letters are always there, echo is never needed
        assert scorer.prob_a(texts) == pytest.approx(expected, abs=1e-5)
    finally:
        server.close()


def test_the_preferences_stage_picks_the_served_scorer_and_probes_the_server(critic, tmp_path):
    from align.config import PreferencesConfig
    from align.generation import build_backend
    from align.stages.feedback import _feedback_scorer

    model, tok, texts, expected = critic
    model.save_pretrained(tmp_path / "critic")
    tok.save_pretrained(tmp_path / "critic")
    server = LogprobServer(model, tok)
    try:
        section = PreferencesConfig(
            mode="ai_feedback", top_logprobs=300, backend=BackendSettings(kind="openai", base_url=server.url)
        )
        feedback = build_backend(section.backend, str(tmp_path / "critic"))
        scorer = _feedback_scorer(section, feedback, str(tmp_path / "critic"), trust=False)
        assert isinstance(scorer, ServedOptionScorer) and scorer.echo_ok is True  # check() ran at start
        assert scorer.prob_a(texts) == pytest.approx(expected, abs=1e-5)
    finally:
        server.close()
    local = _feedback_scorer(section, build_backend(BackendSettings(), str(tmp_path / "critic")), "unused", False)
    assert isinstance(local, OptionScorer)


def test_an_unreachable_server_fails_the_probe_with_what_to_start(critic):
    _, tok, _, _ = critic
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAIBackend(BackendSettings(kind="openai", base_url=f"http://127.0.0.1:{port}/v1"), "critic")
    with pytest.raises(ConfigError, match=r"did not answer .*cannot reach an OpenAI-compatible server"):
        ServedOptionScorer(backend, tok).check()
