"""Generation through any OpenAI-compatible server: vLLM serve, TGI, ``transformers serve``, llama.cpp.

Every conversation is one request, but requests are sent concurrently (asyncio, a semaphore of
``max_concurrency``), so a server that batches continuously (vLLM, TGI) sees a full batch. Transient
failures (429, 5xx, timeouts, dropped connections) are retried with exponential backoff and jitter,
honouring ``Retry-After``; errors that retrying cannot fix (an unreachable server, a wrong model name, a
bad request) fail at once with a message that says what to change.

The API key is read from the environment variable named in the config when the backend is built and is
kept only in the request headers: it is not part of the backend's name, repr, errors or any manifest. It is
sent only over https or to this machine (loopback), unless ``allow_insecure_http`` says the network is trusted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from align.config import BackendSettings, ConfigError, SamplingSettings
from align.generation.base import Message, Progress
from align.redaction import redact_text

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
BACKOFF_BASE = 0.5  # seconds before the first retry; doubles each time
BACKOFF_CAP = 20.0


class ServerError(RuntimeError):
    """The server could not be used: unreachable, wrong model name, rejected request or out of retries."""


def _backoff(attempt: int, retry_after: str | None) -> float:
    """Seconds before retry ``attempt`` (0-based): the server's Retry-After if it gave one, else 2^n with jitter.

    Jitter spreads the retries of many concurrent requests, so they do not hit a recovering server together.
    """
    if retry_after:
        try:
            return min(float(retry_after), BACKOFF_CAP)
        except ValueError:
            pass
    return min(BACKOFF_BASE * 2**attempt, BACKOFF_CAP) * (0.5 + random.random())


def key_safe_over(url: str) -> bool:
    """Whether a key may be sent to ``url``: over https, or over http to this machine (loopback) only."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = (parts.hostname or "").rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _detail(response: httpx.Response) -> str:
    """The server's own error message (OpenAI, vLLM, TGI and FastAPI each nest it differently)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("message", body)))
        if isinstance(err, dict):
            err = err.get("message", err)
        return str(err)[:300]
    return str(body)[:300]


def _run_sync(coro: Any) -> Any:
    """Run ``coro`` to completion from synchronous code, also when called inside an event loop (a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as e:
            result["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


class OpenAIBackend:
    """Chat or text completions from a server, with the :class:`~align.generation.base.Backend` interface.

    ``model`` is the name the server serves the model under (``vllm serve X`` serves ``X``). With
    ``endpoint: completions`` the conversation is rendered locally by ``render`` (a chat template), for
    servers or models without one; ``chat`` lets the server apply its own template.
    """

    def __init__(
        self,
        settings: BackendSettings,
        model: str,
        *,
        name: str | None = None,
        render: Callable[[Sequence[Message]], str] | None = None,
    ) -> None:
        if settings.endpoint == "completions" and render is None:
            raise ValueError("the completions endpoint needs a chat-template renderer for the conversations")
        self.settings = settings
        self.model = model
        self.base_url = settings.base_url.rstrip("/")
        self.name = name or f"{model}@{self.base_url}"
        self.render = render
        self.tokens_generated = 0
        self.samples_generated = 0
        self.seconds = 0.0
        self.retries = 0  # transient failures that were retried, for manifests and tests
        key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
        if key and not settings.allow_insecure_http and not key_safe_over(self.base_url):
            raise ConfigError(
                f"backend.base_url: {redact_text(self.base_url)} is plain http to another machine: the key in "
                f"${settings.api_key_env} would cross the network unencrypted. Use https, unset "
                "backend.api_key_env, or set backend.allow_insecure_http: true for a network you trust"
            )
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}

    def __repr__(self) -> str:  # never shows the headers, which hold the key
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r}, endpoint={self.settings.endpoint!r})"

    # ----------------------------------------------------------------------------------------------

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        sampling: SamplingSettings,
        seed: int,
        desc: str = "generate",
    ) -> list[str]:
        """Send every conversation, at most ``max_concurrency`` at a time, and return replies in input order."""
        if not conversations:
            return []
        return _run_sync(self._generate_all(conversations, sampling, seed, desc))

    def completions(self, payloads: Sequence[dict]) -> list[dict]:
        """Raw JSON bodies of ``/completions`` requests (``model`` filled in), in input order.

        For callers that need more than the text, e.g. RL-CAI labels read log-probabilities. The same
        concurrency limit, retries and clear errors as :meth:`generate` apply.
        """
        if not payloads:
            return []
        return _run_sync(self._complete_all(payloads))

    def _client(self) -> httpx.AsyncClient:
        s = self.settings
        limits = httpx.Limits(max_connections=s.max_concurrency, max_keepalive_connections=s.max_concurrency)
        timeout = httpx.Timeout(s.timeout, connect=min(s.timeout, 10.0))
        return httpx.AsyncClient(base_url=self.base_url, headers=self._headers, timeout=timeout, limits=limits)

    async def _complete_all(self, payloads: Sequence[dict]) -> list[dict]:
        # No Progress and no self.seconds here: those measure generation (tokens/s), which these requests are not.
        bodies: list[dict] = [{} for _ in payloads]
        semaphore = asyncio.Semaphore(self.settings.max_concurrency)
        async with self._client() as client:
            await self._check_reachable()

            async def one(i: int) -> None:
                async with semaphore:
                    r = await self._post(client, "/completions", {"model": self.model, **payloads[i]})
                bodies[i] = r.json()

            tasks = [asyncio.ensure_future(one(i)) for i in range(len(payloads))]
            try:
                await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return bodies

    async def _generate_all(
        self, conversations: Sequence[Sequence[Message]], sampling: SamplingSettings, seed: int, desc: str
    ) -> list[str]:
        replies: list[str] = [""] * len(conversations)
        semaphore = asyncio.Semaphore(self.settings.max_concurrency)
        progress = Progress(len(conversations), desc)
        start = time.perf_counter()
        async with self._client() as client:
            await self._check_reachable()

            async def one(i: int) -> None:
                async with semaphore:
                    text, tokens = await self._request(client, self._payload(conversations[i], sampling, seed, i))
                replies[i] = text.strip()
                self.tokens_generated += tokens
                self.samples_generated += 1
                progress.update(1, tokens)

            tasks = [asyncio.ensure_future(one(i)) for i in range(len(conversations))]
            try:
                await asyncio.gather(*tasks)
            finally:
                for t in tasks:  # one request failed for good: do not leave the others running
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                progress.close()
                self.seconds += time.perf_counter() - start
        return replies

    def _payload(self, conversation: Sequence[Message], sampling: SamplingSettings, seed: int, index: int) -> dict:
        payload: dict[str, Any] = {
            "model": self.model,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            # one seed per conversation, so servers that honour it (vLLM) reproduce a rerun exactly
            "seed": (seed * 100_003 + index) % 2**31,
        }
        if self.settings.endpoint == "chat":
            payload["messages"] = [dict(m) for m in conversation]
        else:
            payload["prompt"] = self.render(conversation)
        return payload

    @property
    def _path(self) -> str:
        return "/chat/completions" if self.settings.endpoint == "chat" else "/completions"

    async def _check_reachable(self) -> None:
        """Fail at once, with what to do, when nothing listens at ``base_url`` (no retries: nothing would change).

        A client of its own: some servers fail GET /models and drop the connection, which must not poison
        the keep-alive pool of the real requests.
        """
        try:
            async with httpx.AsyncClient(headers=self._headers, timeout=min(self.settings.timeout, 10.0)) as probe:
                await probe.get(f"{self.base_url}/models")
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise ServerError(
                f"cannot reach an OpenAI-compatible server at {self.base_url} ({type(e).__name__}: {e}). "
                "Start one (e.g. `vllm serve MODEL`, `transformers serve MODEL`) or fix backend.base_url "
                "(it should end in /v1)."
            ) from None
        except httpx.HTTPError:
            pass  # it answered something: reachable; real requests will report real problems

    async def _served_models(self) -> list[str]:
        """Model names from GET /models, best effort (some servers fail this route), for error messages."""
        try:
            async with httpx.AsyncClient(headers=self._headers, timeout=min(self.settings.timeout, 10.0)) as probe:
                r = await probe.get(f"{self.base_url}/models")
            return [str(m.get("id")) for m in r.json().get("data", [])] if r.status_code == 200 else []
        except (httpx.HTTPError, ValueError, AttributeError):
            return []

    async def _request(self, client: httpx.AsyncClient, payload: dict) -> tuple[str, int]:
        """(reply text, completion tokens) of one request, retrying transient failures with backoff."""
        return self._parse(await self._post(client, self._path, payload))

    async def _post(self, client: httpx.AsyncClient, path: str, payload: dict) -> httpx.Response:
        """The 200 response to one POST to ``path``, retrying transient failures with backoff."""
        attempts = self.settings.max_retries + 1
        last = ""
        for attempt in range(attempts):
            retry_after = None
            try:
                r = await client.post(path, json=payload)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            else:
                if r.status_code == 200:
                    return r
                if r.status_code not in RETRY_STATUS:
                    await self._raise_for(r, path)
                last = f"HTTP {r.status_code}: {_detail(r)}"
                retry_after = r.headers.get("retry-after")
            if attempt + 1 < attempts:
                self.retries += 1
                await asyncio.sleep(_backoff(attempt, retry_after))
        raise ServerError(
            f"{self.base_url}{path} failed {attempts} time(s) for model {self.model!r}; last error: {last}. "
            "Raise backend.max_retries or backend.timeout, or lower backend.max_concurrency if the server is "
            "overloaded."
        )

    async def _raise_for(self, r: httpx.Response, path: str) -> None:
        detail = _detail(r)
        # vLLM answers 404 "model does not exist"; transformers serve 400 "pinned to X; requested Y"
        named = "model" in detail.lower() or self.model in detail
        if r.status_code in (400, 404, 422) and (named or r.status_code == 404):
            served = await self._served_models()
            listing = f" The server lists: {', '.join(served)}." if served else ""
            raise ServerError(
                f"{self.base_url} rejected model {self.model!r} (HTTP {r.status_code}: {detail}).{listing} "
                "Set the stage's feedback_model / backend.model to a name the server serves."
            )
        if r.status_code in (401, 403):
            env = self.settings.api_key_env
            raise ServerError(
                f"{self.base_url} refused the request (HTTP {r.status_code}: {detail}); "
                f"check the API key in the environment variable {env!r}"
                if env
                else f"{self.base_url} refused the request (HTTP {r.status_code}: {detail}); set backend.api_key_env"
            )
        raise ServerError(f"{self.base_url}{path} rejected the request (HTTP {r.status_code}: {detail})")

    def _parse(self, r: httpx.Response) -> tuple[str, int]:
        body = r.json()
        choice = body["choices"][0]
        text = (choice["message"].get("content") if self.settings.endpoint == "chat" else choice.get("text")) or ""
        usage = body.get("usage") or {}
        tokens = usage.get("completion_tokens")
        return text, int(tokens) if tokens is not None else len(text.split())
