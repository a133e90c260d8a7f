"""A real OpenAI-compatible HTTP server on 127.0.0.1 for judge tests and the judge bench.

Serves POST /v1/chat/completions from a background thread (stdlib ThreadingHTTPServer, HTTP/1.1
keep-alive). Answers are deterministic functions of the prompt so a test knows what to expect:

  * score requests (``logprobs`` true): the first token's top_logprobs put 0.9 on the prompt's score
    and 0.1 on a non-number, so the judge's score is exactly :func:`expected_score`. The score is the
    ``[[score:N]]`` marker in the prompt if any, else sha256(prompt) mod 101. ``[[refuse]]`` answers
    "REFUSAL" with no number tokens at all.
  * other requests: message content ``{"score": N}``, or the text of a ``[[json:...]]`` marker verbatim.

Faults are queued per prompt with :meth:`FakeOpenAIServer.inject`; each request for that prompt pops
the next one, and once the queue is empty the prompt is answered normally. Fault names:
  "429" / "429:0.2"  HTTP 429 (with Retry-After: 0.2)      "500"   HTTP 500
  "slow"             sleep ``slow_s`` before answering     "400"   HTTP 400
  "truncated"        half the JSON body (valid Content-Length)
  "cut"              Content-Length of the full body, half sent, connection closed
  "refusal"          a normal 200 reply whose only token is "REFUSAL"
  "nologprobs"       a normal 200 reply without the logprobs field
  "echo_auth"        HTTP 401 whose body echoes the Authorization header (a leaky server)
``latency_s`` delays every answer (the bench uses 0.2 s). Counts and timestamps are kept per prompt.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections import Counter, defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_SCORE = re.compile(r"\[\[score:(\d+)\]\]")
_JSON = re.compile(r"\[\[json:(.*?)\]\]", re.DOTALL)


def expected_score(prompt: str) -> int:
    """The score the fake judge gives ``prompt`` (with no fault injected)."""
    marker = _SCORE.search(prompt)
    return int(marker.group(1)) if marker else int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 101


def _score_body(model: str, top: list[tuple[str, float]], with_logprobs: bool = True) -> dict:
    token = top[0][0]
    choice: dict = {"index": 0, "message": {"role": "assistant", "content": token}, "finish_reason": "length"}
    if with_logprobs:
        choice["logprobs"] = {"content": [{
            "token": token, "logprob": top[0][1], "bytes": list(token.encode()),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top]}]}
    return {"id": "chatcmpl-fake", "object": "chat.completion", "model": model, "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def _text_body(model: str, content: str) -> dict:
    return {"id": "chatcmpl-fake", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}


class FakeOpenAIServer:
    """Context manager: ``with FakeOpenAIServer() as server: server.base_url`` -> ".../v1"."""

    def __init__(self, latency_s: float = 0.0, slow_s: float = 2.0):
        self.latency_s, self.slow_s = latency_s, slow_s
        self.requests: Counter[str] = Counter()           # prompt -> requests received
        self.times: dict[str, list[float]] = defaultdict(list)  # prompt -> monotonic arrival times
        self.auth_headers: list[str | None] = []
        self.payloads: list[dict] = []
        self.max_in_flight = 0
        self._faults: dict[str, deque[str]] = defaultdict(deque)
        self._in_flight = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control -----------------------------------------------------------------------------
    def inject(self, prompt: str, *faults: str) -> None:
        with self._lock:
            self._faults[prompt].extend(faults)

    @property
    def total_requests(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> FakeOpenAIServer:
        server = self

        class Handler(_Handler):
            fake = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self._httpd.daemon_threads = True
        self._httpd.request_queue_size = 512  # many concurrent connects must not overflow the backlog
        self._httpd.server_bind()
        self._httpd.server_activate()
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- request side (called from handler threads) ---------------------------------------------
    def _arrive(self, prompt: str, payload: dict, auth: str | None) -> str | None:
        with self._lock:
            self.requests[prompt] += 1
            self.times[prompt].append(time.monotonic())
            self.auth_headers.append(auth)
            self.payloads.append(payload)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            queue = self._faults.get(prompt)
            return queue.popleft() if queue else None

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes; no 40 ms delayed-ACK stall
    fake: FakeOpenAIServer

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
              content_length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not self.path.endswith("/chat/completions"):
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        payload = json.loads(raw)
        prompt = payload["messages"][-1]["content"]
        fault = self.fake._arrive(prompt, payload, self.headers.get("Authorization"))
        try:
            if self.fake.latency_s:
                time.sleep(self.fake.latency_s)
            self._answer(payload, prompt, fault)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout); nothing to do
            self.close_connection = True
        finally:
            self.fake._leave()

    def _answer(self, payload: dict, prompt: str, fault: str | None) -> None:
        model = payload.get("model", "fake")
        kind, _, arg = (fault or "").partition(":")
        if kind == "429":
            self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": arg} if arg else None)
            return
        if kind in ("500", "400"):
            self._send(int(kind), json.dumps({"error": {"message": f"injected {kind}"}}).encode())
            return
        if kind == "echo_auth":
            echo = {"error": {"message": f"invalid key: {self.headers.get('Authorization')}"}}
            self._send(401, json.dumps(echo).encode())
            return
        if kind == "slow":
            time.sleep(self.fake.slow_s)

        if payload.get("logprobs"):
            if kind == "refusal" or "[[refuse]]" in prompt:
                top = [("REFUSAL", math.log(0.97)), ("I", math.log(0.02)), ("Sorry", math.log(0.01))]
            else:
                top = [(str(expected_score(prompt)), math.log(0.9)), ("The", math.log(0.1))]
            body = _score_body(model, top, with_logprobs=kind != "nologprobs")
        else:
            marker = _JSON.search(prompt)
            body = _text_body(model, marker.group(1) if marker else json.dumps({"score": expected_score(prompt)}))
        data = json.dumps(body).encode()

        if kind == "truncated":
            self._send(200, data[: len(data) // 2])
        elif kind == "cut":
            self._send(200, data[: len(data) // 2], content_length=len(data))
            self.close_connection = True
        else:
            self._send(200, data)
