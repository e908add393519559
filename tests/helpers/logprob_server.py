"""A minimal OpenAI-compatible ``/v1/completions`` server on loopback that computes real log-probabilities.

It runs a transformers causal LM in-process and answers in the completions API's own shape (``tokens``,
``token_logprobs``, ``top_logprobs`` dicts, ``text_offset``) or, with ``shape="chat"``, in the chat shape
llama.cpp's server uses (``content`` list). ``logprobs=False`` answers like a server that returns none;
``echo_shift=True`` gives each echoed token its log-probability under the *next* position's distribution, as
llama-cpp-python 0.3.36 does.
The numbers come from the model, not from the test, so the scorer's parsing and arithmetic are checked
against the in-process scorer on the same weights.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


class LogprobServer:
    def __init__(
        self, model, tokenizer, *, shape: str = "completions", logprobs: bool = True, echo_shift: bool = False
    ) -> None:
        self.model, self.tokenizer, self.shape, self.logprobs = model.eval(), tokenizer, shape, logprobs
        self.echo_shift = echo_shift
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, body: dict, status: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send({"data": [{"id": "critic"}]})

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
                server.requests.append(payload)
                self._send(server.answer(payload))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @torch.inference_mode()
    def answer(self, payload: dict) -> dict:
        tok = self.tokenizer
        prompt = payload["prompt"]
        ids = tok(prompt, add_special_tokens=False).input_ids
        logprobs = torch.log_softmax(self.model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
        k = int(payload.get("logprobs") or 0)
        new = int(logprobs[-1].argmax())
        text = tok.decode([new])
        echo = payload.get("echo") and self.shape != "chat"  # llama-server has no echo
        choice: dict = {"index": 0, "text": (prompt + text) if echo else text}
        if not self.logprobs or not payload.get("logprobs"):
            return {"choices": [choice]}

        def top(row: torch.Tensor) -> dict[str, float]:
            values, idx = row.topk(k)
            return {tok.decode([int(i)]): float(v) for v, i in zip(values, idx)}

        if self.shape == "chat":
            row = logprobs[-1]
            entries = [{"token": t, "logprob": v} for t, v in top(row).items()]
            choice["logprobs"] = {"content": [{"token": text, "logprob": float(row[new]), "top_logprobs": entries}]}
            return {"choices": [choice]}
        positions = list(range(len(ids))) if echo else []
        tokens = [tok.decode([i]) for i in ids] if positions else []
        row = (lambda p: p) if self.echo_shift else (lambda p: p - 1)
        token_lps: list = [None] + [float(logprobs[row(p), ids[p]]) for p in positions[1:]] if positions else []
        tops: list = [None] + [top(logprobs[p - 1]) for p in positions[1:]] if positions else []
        offsets, at = [], 0
        for t in tokens:
            offsets.append(at)
            at += len(t)
        choice["logprobs"] = {
            "tokens": [*tokens, text],
            "token_logprobs": [*token_lps, float(logprobs[-1, new])],
            "top_logprobs": [*tops, top(logprobs[-1])],
            "text_offset": [*offsets, len(prompt)],
        }
        return {"choices": [choice]}
