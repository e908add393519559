"""The openai backend against a real ``transformers serve`` on loopback, serving the tiny model from a directory.

A small proxy between the two counts requests in flight (the concurrency limit), injects 503s (retries)
and records headers (the API key is sent, and shown nowhere else).
"""

import os
import shutil
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from helpers.servers import free_port, serving
from helpers.tiny_lm import convs, save_tiny_lm

from align.config import BackendSettings
from align.config import SamplingSettings as S
from align.generation import TransformersBackend, build_backend
from align.generation.openai_backend import OpenAIBackend, ServerError

pytest.importorskip("fastapi", reason="transformers serve needs the dev extra (fastapi, uvicorn, openai)")
pytest.importorskip("uvicorn", reason="transformers serve needs the dev extra (fastapi, uvicorn, openai)")

PROMPTS = [
    "How do I fix a bike?",
    "Fix it?",
    "Sure. To fix it, first look at the chain and then at the brakes, then fix a bike.",
    "I can't help",
    "How do I look at the brakes of a bike, and then fix the chain?",
    "look",
]
GREEDY = S(max_new_tokens=8, temperature=0, batch_size=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("served") / "tiny"
    save_tiny_lm(path, PROMPTS)
    return path


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """``transformers serve DIR`` on a free loopback port; yields its /v1 URL."""
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    assert exe, "the transformers CLI is not installed"
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with serving(
        [exe, "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        f"http://127.0.0.1:{port}/health",
        log,
        env,
    ):
        yield f"http://127.0.0.1:{port}/v1"


class Proxy:
    """Forwards to the server; counts requests in flight, can answer 503 to the next N POSTs, keeps headers."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = self.posts = 0
        self.fail_next = 0
        self.failed = 0
        self.auth_headers: list[str | None] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _forward(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with proxy.lock:
                    proxy.auth_headers.append(self.headers.get("authorization"))
                    if method == "POST":
                        proxy.posts += 1
                        if proxy.fail_next > 0:
                            proxy.fail_next -= 1
                            proxy.failed += 1
                            fail = True
                        else:
                            fail = False
                    else:
                        fail = False
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                try:
                    if fail:
                        status, headers, content = 503, {"retry-after": "0"}, b'{"error": "overloaded"}'
                    else:
                        path = self.path.removeprefix("/v1")
                        r = httpx.request(
                            method,
                            proxy.upstream + path,
                            content=body,
                            headers={"content-type": "application/json"},
                            timeout=60,
                        )
                        status, headers, content = r.status_code, {}, r.content
                finally:
                    # counted out before the reply is sent: once the client holds the reply it may send the next
                    # request, which must not find this one still counted
                    with proxy.lock:
                        proxy.in_flight -= 1
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def do_POST(self):
                self._forward("POST")

            def do_GET(self):
                self._forward("GET")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def proxy(server):
    p = Proxy(server)
    yield p
    p.close()


@pytest.fixture(scope="module")
def in_process(model_dir):
    backend = build_backend(BackendSettings(), str(model_dir))
    assert isinstance(backend, TransformersBackend)
    return backend.generate(convs(PROMPTS), GREEDY, seed=0)


def test_chat_concurrent_requests_match_in_process_greedy(proxy, model_dir, in_process, monkeypatch):
    monkeypatch.setenv("ALIGN_TEST_KEY", "sk-test-secret")
    settings = BackendSettings(kind="openai", base_url=proxy.url, api_key_env="ALIGN_TEST_KEY", max_concurrency=3)
    backend = build_backend(settings, str(model_dir))
    assert isinstance(backend, OpenAIBackend)
    prompts = PROMPTS * 2
    replies = backend.generate(convs(prompts), GREEDY, seed=0)
    assert replies == in_process * 2  # the served model answers like the in-process one, in input order
    assert len(set(replies)) > 1
    assert proxy.max_in_flight == 3  # the limit is reached and never exceeded
    assert backend.samples_generated == len(prompts) and backend.tokens_generated > 0 and backend.seconds > 0
    # the key travels in the Authorization header and nowhere else
    assert set(proxy.auth_headers) == {"Bearer sk-test-secret"}
    assert "sk-test-secret" not in f"{backend!r} {backend.name} {vars(settings)}"


def test_completions_endpoint_renders_the_chat_template_locally(proxy, model_dir, in_process):
    settings = BackendSettings(kind="openai", base_url=proxy.url, endpoint="completions", max_concurrency=2)
    backend = build_backend(settings, str(model_dir))
    assert backend.generate(convs(PROMPTS), GREEDY, seed=0) == in_process


def test_retries_after_a_503(proxy, model_dir, in_process):
    proxy.fail_next = 2
    settings = BackendSettings(kind="openai", base_url=proxy.url, max_concurrency=1, max_retries=3)
    backend = OpenAIBackend(settings, str(model_dir))
    assert backend.generate(convs(PROMPTS[:3]), GREEDY, seed=0) == in_process[:3]
    assert proxy.failed == 2 and backend.retries == 2
    assert proxy.posts == 3 + 2


def test_gives_up_after_max_retries_with_the_last_error(proxy, model_dir):
    proxy.fail_next = 10
    settings = BackendSettings(kind="openai", base_url=proxy.url, max_concurrency=1, max_retries=1)
    with pytest.raises(ServerError, match=r"failed 2 time\(s\).*HTTP 503: overloaded"):
        OpenAIBackend(settings, str(model_dir)).generate(convs(PROMPTS[:1]), GREEDY, seed=0)


def test_wrong_model_name_is_a_clear_error(server):
    backend = OpenAIBackend(BackendSettings(kind="openai", base_url=server, max_retries=0), "nope")
    with pytest.raises(ServerError, match=r"rejected model 'nope'.*feedback_model / backend.model"):
        backend.generate(convs(PROMPTS[:1]), GREEDY, seed=0)


def test_unreachable_server_fails_fast_and_says_what_to_do():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    backend = OpenAIBackend(BackendSettings(kind="openai", base_url=url), "tiny")
    start = time.perf_counter()
    with pytest.raises(ServerError, match=r"cannot reach an OpenAI-compatible server at .*vllm serve"):
        backend.generate(convs(PROMPTS[:2]), GREEDY, seed=0)
    assert time.perf_counter() - start < 10  # no retry loop against a server that is not there


@pytest.mark.parametrize("url", ["http://gpu-box:8000/v1", "http://10.0.0.7:8000/v1", "http://user:pw@192.168.1.2/v1"])
def test_a_key_is_never_sent_over_plain_http_to_another_machine(url, monkeypatch):
    """The default api_key_env is OPENAI_API_KEY: with a real key set, an http:// URL to another host used to send
    it unencrypted. Now the backend refuses before any request, and says how to fix it (without the key)."""
    from align.config import ConfigError

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-0123456789")
    with pytest.raises(ConfigError, match=r"backend.base_url: .* is plain http to another machine") as err:
        OpenAIBackend(BackendSettings(kind="openai", base_url=url), "m")
    assert "sk-test-secret" not in str(err.value) and "pw@" not in str(err.value)
    insecure = BackendSettings(kind="openai", base_url=url, allow_insecure_http=True)
    assert OpenAIBackend(insecure, "m")._headers == {"Authorization": "Bearer sk-test-secret-0123456789"}
    monkeypatch.delenv("OPENAI_API_KEY")  # no key, nothing to protect
    assert OpenAIBackend(BackendSettings(kind="openai", base_url=url), "m")._headers == {}


@pytest.mark.parametrize(
    "url",
    [
        "https://gpu-box/v1",
        "http://127.0.0.1:8000/v1",
        "http://127.8.9.1/v1",
        "http://localhost:8000/v1",
        "http://[::1]:8000/v1",
    ],
)
def test_a_key_goes_over_https_or_to_this_machine(url, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-0123456789")
    backend = OpenAIBackend(BackendSettings(kind="openai", base_url=url), "m")
    assert backend._headers == {"Authorization": "Bearer sk-test-secret-0123456789"}


def test_labelling_through_transformers_serve_fails_at_start_it_returns_no_logprobs(server, model_dir):
    from align.config import ConfigError
    from align.feedback.preferences import ServedOptionScorer
    from align.models import load_tokenizer

    backend = OpenAIBackend(BackendSettings(kind="openai", base_url=server, max_retries=0), str(model_dir))
    scorer = ServedOptionScorer(backend, load_tokenizer(str(model_dir)))
    with pytest.raises(ConfigError, match=r"returned no top log-probabilities") as info:
        scorer.check()
    assert server in str(info.value) and "vLLM" in str(info.value) and "llama.cpp" in str(info.value)
