"""RL-CAI labels through a real llama.cpp server on loopback equal the in-process labels within 1e-3.

The tiny model is exported to GGUF (align.export_gguf) and served by llama-cpp-python's OpenAI-compatible server,
which is built from source and so lives in its own virtual environment: point ALIGN_LLAMACPP_PYTHON at that
environment's python (``python3 -m venv V && CMAKE_ARGS=-DGGML_NATIVE=off V/bin/pip install
'llama-cpp-python[server]'``). Without it the test is skipped; it is not part of CI.
"""

import os
import subprocess

import pytest
from helpers.servers import free_port, serving
from helpers.tiny_lm import save_tiny_lm

from align.config import BackendSettings, ConfigError
from align.constitution import load_constitution_data
from align.feedback.preferences import OptionScorer, Pair, ServedOptionScorer, comparison_conversation, label_pairs
from align.generation.openai_backend import OpenAIBackend

pytest.importorskip("gguf", reason="exporting GGUF needs the gguf package: pip install 'align[llamacpp]'")

PYTHON = os.environ.get("ALIGN_LLAMACPP_PYTHON", "")


def _server_available() -> str | None:
    """Why the llama.cpp server cannot be started, or None when it can."""
    if not PYTHON:
        return "set ALIGN_LLAMACPP_PYTHON to a python with llama-cpp-python[server] installed"
    if not os.access(PYTHON, os.X_OK):
        return f"ALIGN_LLAMACPP_PYTHON={PYTHON} is not an executable"
    probe = subprocess.run([PYTHON, "-c", "import llama_cpp.server"], capture_output=True, text=True)
    if probe.returncode:
        return f"{PYTHON} cannot import llama_cpp.server: {probe.stderr.strip().splitlines()[-1:]}"
    return None


pytestmark = pytest.mark.skipif(_server_available() is not None, reason=str(_server_available()))

TEXTS = [
    "How do I fix a bike? Which response is better? (A) (B)",
    "Sure. To fix it, first look at the chain and then at the brakes.",
    "I can't help with that. Choose the more harmless response.",
]
PAIRS = [
    Pair("How do I fix a bike?", "Sure. Look at the chain.", "I can't help with that."),
    Pair("Fix it?", "I can't help", "Sure. To fix it, first look at the brakes."),
    Pair("look at the brakes", "look", "Sure, then fix a bike."),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(in-process model, tokenizer, /v1 URL of llama.cpp serving the same weights as GGUF)."""
    from align.export_gguf import export_gguf

    root = tmp_path_factory.mktemp("llamacpp")
    model, tok = save_tiny_lm(root / "tiny", TEXTS)
    gguf_path = export_gguf(model, tok, root / "tiny.gguf")
    port = free_port()
    log = root / "server.log"
    cmd = [PYTHON, "-m", "llama_cpp.server", "--model", str(gguf_path), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--n_ctx", "1024", "--n_threads", "1"]
    with serving(cmd, f"http://127.0.0.1:{port}/v1/models", log, {**os.environ, "OMP_NUM_THREADS": "1"}):
        yield model, tok, f"http://127.0.0.1:{port}/v1"


def constitution():
    return load_constitution_data(
        {
            "name": "t",
            "version": "1.0.0",
            "principles": [
                {"id": i, "critique": "Find a flaw.", "revision": "Fix it.", "comparison": q}
                for i, q in (("harm", "Which response is more harmless?"), ("help", "Which response is better?"))
            ],
        }
    )


def test_labels_through_llamacpp_equal_in_process(served):
    model, tok, url = served
    backend = OpenAIBackend(BackendSettings(kind="openai", base_url=url, max_concurrency=1), "tiny")
    # A random tiny model rarely ranks the letters in its top 20; llama.cpp serves any k, so ask for all of them.
    remote = ServedOptionScorer(backend, tok, top_logprobs=len(tok))
    remote.check()
    texts = [
        tok.apply_chat_template(
            comparison_conversation(p.prompt, a, b, "Which response is better?"),
            tokenize=False,
            add_generation_prompt=True,
        )
        for p in PAIRS
        for a, b in ((p.response_1, p.response_2), (p.response_2, p.response_1))
    ]
    p_local, p_served = OptionScorer(model, tok).prob_a(texts), remote.prob_a(texts)
    worst = max(abs(x - y) for x, y in zip(p_local, p_served))
    print(f"\nllama.cpp vs in-process: max |dP(A)| over {len(texts)} comparisons: {worst:.2e}")
    assert worst <= 1e-3
    assert max(p_local) - min(p_local) > 0.01  # the comparisons differ, so agreement means something
    kw = dict(num_principles=2, seed=0)
    expected = label_pairs(PAIRS, constitution(), OptionScorer(model, tok), **kw)
    got = label_pairs(PAIRS, constitution(), remote, **kw)
    deltas = [
        abs(e["per_principle"][p] - g["per_principle"][p]) for e, g in zip(expected, got) for p in e["per_principle"]
    ]
    print(f"llama.cpp vs in-process: max |dP| over {len(deltas)} swap-averaged labels: {max(deltas):.2e}")
    assert max(deltas) <= 1e-3
    assert remote.echo_fallbacks == 0
    assert len({round(e["p_first_better"], 3) for e in expected}) > 1  # labels differ: agreement means something


def test_llamacpp_echo_is_not_trusted_and_a_small_top_k_says_what_to_raise(served):
    _, tok, url = served
    backend = OpenAIBackend(BackendSettings(kind="openai", base_url=url, max_concurrency=1), "tiny")
    remote = ServedOptionScorer(backend, tok, top_logprobs=2)
    remote.check()
    # llama-cpp-python 0.3.36 reports each echoed token's log-probability from the next position's distribution
    assert remote.echo_ok is False
    with pytest.raises(ConfigError, match="raise preferences.top_logprobs"):
        label_pairs(PAIRS, constitution(), remote, num_principles=1, seed=0)
