"""Judge backend for any OpenAI-compatible chat-completions server (OpenAI, vLLM, Ollama, llama.cpp).

Contract:
  * Every prompt ends as a result aligned with its input position: scored, or unscored with a reason.
    Nothing is raised for transport trouble, nothing is dropped, nothing is retried forever.
  * Retries: 429 waits the server's Retry-After (capped at ``retry_after_max_s``); 5xx, timeouts,
    connection errors and truncated/invalid JSON bodies wait a full-jitter exponential backoff;
    any other 4xx is final. After ``max_attempts`` the reason reads "gave up after N attempts: ...".
  * A reply without logprobs, or without enough probability on number tokens, is unscored (no retry).
  * The API key is read from the environment variable *named* by ``api_key_env`` at call time and
    only ever placed in the Authorization header: never stored on the judge, never in reprs, identity,
    cache keys or reasons (a server that echoes it back has it replaced by ``***``).
  * Identical prompts in one batch are requested once (the judge runs at temperature 0).
Concurrency: ``max_concurrency`` lanes, each a single-connection ``httpx.AsyncClient``, handed out by
an asyncio queue that bounds requests in flight like a semaphore (a task sleeping in backoff returns
its lane). Why not one client with a big pool: httpcore's pool does O(connections) bookkeeping per
request (encode/httpx#3215), which capped one 64-connection client at ~40 judgments/s on 2 cores;
lanes keep that cost O(1) (see bench/bench_judge.py). Lanes are created on first use and share one
SSL context. Use ``async with judge:`` to keep them open across many single calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import ConfigDict, Field, field_validator

from spillover.config import StrictModel
from spillover.errors import SpilloverError
from spillover.judge._aggregate import JsonAnswer, JudgeScore, aggregate_score, parse_json_answer
from spillover.judge._cache import JudgeCache, cache_key

TOP_LOGPROBS = 20  # the most OpenAI (and vLLM's default max_logprobs) allow
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
Progress = Callable[[int, int], None]


class OpenAIJudgeConfig(StrictModel):
    """Where the judge lives and how hard to try. Holds the *name* of the key's variable, never the key."""

    model_config = ConfigDict(hide_input_in_errors=True)  # a key pasted by mistake must not be echoed

    base_url: str = Field(description="API root up to and including the version, e.g. https://api.openai.com/v1 "
                          "or http://localhost:8000/v1; requests go to {base_url}/chat/completions.")
    model: str = Field(min_length=1, description="Judge model name as the server knows it; part of the cache key "
                       "(with the base URL) and of the judge identity recorded with every judgment.")
    api_key_env: str | None = Field(None, description="NAME of the environment variable holding the API key "
                                    "(e.g. OPENAI_API_KEY), read at call time; null for local servers without auth.")
    max_concurrency: int = Field(32, ge=1, le=4096, description="HTTP requests in flight at once; raise for "
                                 "throughput, lower if the server answers 429 often.")
    timeout_s: float = Field(60.0, gt=0, description="Total seconds one attempt may take before it counts as a "
                             "timeout and is retried.")
    max_attempts: int = Field(6, ge=1, le=100, description="Attempts per prompt (first try included) before the "
                              "judgment is recorded as unscored.")
    backoff_base_s: float = Field(1.0, ge=0, description="Backoff after the first failure is uniform in "
                                  "[0, base]; the ceiling doubles each further failure.")
    backoff_max_s: float = Field(30.0, ge=0, description="Ceiling of one backoff wait.")
    retry_after_max_s: float = Field(60.0, ge=0, description="Cap on a server's Retry-After wait after HTTP 429.")
    min_mass: float = Field(0.25, ge=0, le=1, description="Least probability the top-20 first tokens must put on "
                            "numbers 0..100 for a judgment to be scored; below it the judgment is unscored.")
    json_max_tokens: int = Field(400, ge=1, description="Token budget of a JSON answer (complete_json).")
    cache_dir: Path | None = Field(None, description="Folder for the reply cache (sqlite); a rerun of cached "
                                   "prompts makes no requests. null disables caching.")

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// (e.g. http://localhost:8000/v1)")
        if value.endswith("/chat/completions"):
            raise ValueError("give the API root (e.g. .../v1), not the /chat/completions endpoint")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _check_env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError("must be the NAME of an environment variable (e.g. OPENAI_API_KEY), not the key itself")
        return value


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), or None when absent/unreadable."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def retry_delay(attempt: int, retry_after: str | None, config: OpenAIJudgeConfig, rng: random.Random) -> float:
    """Wait before attempt ``attempt + 1``: the server's Retry-After (capped) if readable, else full jitter,
    uniform in [0, min(backoff_max_s, backoff_base_s * 2**(attempt-1))]."""
    server_says = parse_retry_after(retry_after)
    if server_says is not None:
        return min(server_says, config.retry_after_max_s)
    return rng.uniform(0.0, min(config.backoff_max_s, config.backoff_base_s * 2.0 ** (attempt - 1)))


def _first_token_logprobs(body: dict) -> list[tuple[str, float]] | str:
    """[(token, logprob)] of the first generated token, or the reason the reply has none."""
    try:
        first = body["choices"][0]["logprobs"]["content"][0]
        candidates = first.get("top_logprobs") or [first]
        return [(str(c["token"]), float(c["logprob"])) for c in candidates]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return "reply has no first-token logprobs (does this server support logprobs/top_logprobs?)"


def _score_reply(body: dict) -> dict | str:
    """The cacheable part of a score reply ({"top_logprobs": pairs}), or the reason there is none."""
    pairs = _first_token_logprobs(body)
    return pairs if isinstance(pairs, str) else {"top_logprobs": pairs}


def _answer_text(body: dict) -> dict | str:
    """{"content", "finish_reason"} of the first choice, or the reason the reply has no text."""
    try:
        choice = body["choices"][0]
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return "reply has no message content"
    if not isinstance(content, str):
        return "reply has no message content"
    return {"content": content, "finish_reason": choice.get("finish_reason")}


@dataclass(frozen=True)
class JsonReply(JsonAnswer):
    """A :class:`JsonAnswer` that tells an unusable reply from no reply: ``malformed`` is True when the
    judge answered but its text is not one JSON object (rubric rewards score that 0), False when no reply
    arrived (transport or server failure: rewards score their fallback)."""

    malformed: bool = False


def _json_reply(reply: dict) -> JsonReply:
    answer = parse_json_answer(reply["content"], reply.get("finish_reason") == "length")
    return JsonReply(answer.value, answer.reason, malformed=not answer.ok)


@dataclass(frozen=True)
class _RequestKind:
    """How one kind of request (score / json) is sent, read, cached and reported when it fails."""

    name: str
    params: dict[str, Any]  # settings that change the answer: part of the cache key
    extra: dict[str, Any]  # further request-body fields
    read_reply: Callable[[dict], dict | str]  # body -> cacheable reply, or the reason there is none
    from_reply: Callable[[dict], Any]  # cacheable reply -> result
    unscored: Callable[[str], Any]  # failure reason -> result


class OpenAIJudge:
    """Scores prompts with an OpenAI-compatible judge; see the module docstring for the contract."""

    kind = "openai"

    def __init__(self, config: OpenAIJudgeConfig, *, rng: random.Random | None = None):
        self.config = config
        self._url = f"{config.base_url}/chat/completions"
        self._rng = rng or random.Random()
        self._lanes: asyncio.LifoQueue[httpx.AsyncClient | None] | None = None
        self._clients: list[httpx.AsyncClient] = []
        self._ssl_context: Any = None
        self._users = 0

    def __repr__(self) -> str:
        return f"OpenAIJudge(model={self.config.model!r}, base_url={self.config.base_url!r})"

    def judge_identity(self) -> dict[str, Any]:
        """What makes judgments comparable across runs; recorded with every judgment. Holds no secret."""
        c = self.config
        return {"kind": self.kind, "model": c.model, "base_url": c.base_url, "min_mass": c.min_mass,
                "top_logprobs": TOP_LOGPROBS}

    # -- connection pool -------------------------------------------------------------------------
    async def __aenter__(self) -> OpenAIJudge:
        await self._open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()

    async def _open(self) -> None:
        if self._users == 0:
            self._lanes = asyncio.LifoQueue()  # LIFO: warm connections are reused before new ones open
            for _ in range(self.config.max_concurrency):
                self._lanes.put_nowait(None)  # a lane whose client is created on first use
        self._users += 1

    async def _close(self) -> None:
        self._users -= 1
        if self._users == 0:
            clients, self._clients, self._lanes = self._clients, [], None
            await asyncio.gather(*(client.aclose() for client in clients))

    def _new_lane(self) -> httpx.AsyncClient:
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context()
        client = httpx.AsyncClient(verify=self._ssl_context, timeout=httpx.Timeout(self.config.timeout_s),
                                   limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
        self._clients.append(client)
        return client

    @contextlib.asynccontextmanager
    async def _session(self):
        await self._open()
        try:
            yield
        finally:
            await self._close()

    # -- public API ------------------------------------------------------------------------------
    async def score(self, prompt: str) -> JudgeScore:
        return (await self.score_many([prompt]))[0]

    async def score_many(self, prompts: Iterable[str], progress: Progress | None = None) -> list[JudgeScore]:
        """One JudgeScore per prompt, in input order. ``progress(done, total)`` after each one settles."""
        min_mass = self.config.min_mass
        kind = _RequestKind(
            "score", params={"max_tokens": 1, "temperature": 0, "top_logprobs": TOP_LOGPROBS},
            extra={"logprobs": True, "top_logprobs": TOP_LOGPROBS}, read_reply=_score_reply,
            from_reply=lambda reply: aggregate_score([tuple(pair) for pair in reply["top_logprobs"]], min_mass),
            unscored=JudgeScore.unscored)
        return await self._many(kind, prompts, progress)

    def score_many_sync(self, prompts: Iterable[str], progress: Progress | None = None) -> list[JudgeScore]:
        """Blocking :meth:`score_many` for scripts; inside a running event loop, await score_many instead."""
        return _run_sync(self.score_many(list(prompts), progress), "score_many")

    async def complete_json(self, prompt: str, schema: dict | None = None) -> JsonReply:
        return (await self.complete_json_many([prompt], schema))[0]

    async def complete_json_many(self, prompts: Iterable[str], schema: dict | None = None,
                                 progress: Progress | None = None) -> list[JsonReply]:
        """A JSON-object answer per prompt (or the reason there is none), in input order.

        With ``schema`` the request carries ``response_format: json_schema`` so servers that support
        structured output constrain the answer; without it the model is only asked by the prompt.
        """
        extra: dict[str, Any] = {}
        if schema is not None:
            extra["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
        kind = _RequestKind(
            "json", params={"max_tokens": self.config.json_max_tokens, "temperature": 0, "schema": schema},
            extra=extra, read_reply=_answer_text, from_reply=_json_reply, unscored=lambda reason: JsonReply(None, reason))
        return await self._many(kind, prompts, progress)

    def complete_json_many_sync(self, prompts: Iterable[str], schema: dict | None = None,
                                progress: Progress | None = None) -> list[JsonReply]:
        return _run_sync(self.complete_json_many(list(prompts), schema, progress), "complete_json_many")

    # -- machinery -------------------------------------------------------------------------------
    def _api_key(self) -> str | None:
        name = self.config.api_key_env
        if name is None:
            return None
        key = os.environ.get(name, "").strip()
        if not key:
            raise SpilloverError(f"environment variable {name} (the judge's API key) is empty or not set",
                                 where="judge", fix=f"export {name}=<your key>, or set api_key_env: null "
                                 "for a local server without auth")
        return key

    async def _many(self, kind: _RequestKind, prompts: Iterable[str], progress: Progress | None) -> list[Any]:
        """Shared batch path: cache lookup, one request per distinct uncached prompt, results in order."""
        prompts = list(prompts)
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f"prompt {i} is {type(prompt).__name__}, expected str")
        key = self._api_key()  # before any request: a missing key fails the batch at once
        model, total, done = self.config.model, len(prompts), 0
        copies: dict[str, int] = {}
        for prompt in prompts:
            copies[prompt] = copies.get(prompt, 0) + 1

        def settled(prompt: str) -> None:
            nonlocal done
            done += copies[prompt]
            if progress is not None:
                progress(done, total)

        cache_dir = self.config.cache_dir
        with JudgeCache(cache_dir) if cache_dir is not None else contextlib.nullcontext() as cache:
            keys = ({p: cache_key(kind.name, model, p, kind.params, base_url=self.config.base_url) for p in copies}
                    if cache is not None else {})
            cached = cache.get_many(keys.values()) if cache is not None else {}
            results = {p: kind.from_reply(cached[keys[p]]) for p in copies if keys.get(p) in cached}
            for prompt in results:
                settled(prompt)

            async def one(prompt: str) -> None:
                payload = {"model": model, "messages": [{"role": "user", "content": prompt}],
                           "max_tokens": kind.params["max_tokens"], "temperature": 0, **kind.extra}
                body, failure = await self._post(payload, key)
                reply = failure if body is None else kind.read_reply(body)
                if isinstance(reply, str):  # transport/server failure: reported, never cached
                    results[prompt] = kind.unscored(reply)
                else:
                    if cache is not None:
                        cache.put(keys[prompt], reply, kind=kind.name, model=model)
                    results[prompt] = kind.from_reply(reply)
                settled(prompt)

            todo = [p for p in copies if p not in results]
            if todo:
                async with self._session():
                    await asyncio.gather(*(one(p) for p in todo))
        return [results[p] for p in prompts]

    async def _post(self, payload: dict, key: str | None) -> tuple[dict | None, str | None]:
        """POST with bounded retries: (JSON body, None) on success, (None, reason) when giving up."""
        cfg, lanes = self.config, self._lanes
        assert lanes is not None, "_post outside a session"
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        last = "no attempt"
        for attempt in range(1, cfg.max_attempts + 1):
            retry_after = None
            client = await lanes.get() or self._new_lane()
            try:
                resp = await asyncio.wait_for(client.post(self._url, json=payload, headers=headers), cfg.timeout_s)
            except (asyncio.TimeoutError, httpx.TimeoutException):
                resp, last = None, f"timeout after {cfg.timeout_s:g}s"
            except httpx.RequestError as e:
                resp, last = None, f"connection error ({type(e).__name__})"
            finally:
                lanes.put_nowait(client)
            if resp is not None:
                status = resp.status_code
                if status == 429:
                    last, retry_after = "HTTP 429", resp.headers.get("retry-after")
                elif status >= 500:
                    last = f"HTTP {status}"
                elif status >= 300:
                    return None, _redact(f"HTTP {status}: {_excerpt(resp.text)}", key)
                else:
                    try:
                        body = resp.json()
                    except ValueError:  # JSONDecodeError and UnicodeDecodeError: a cut or garbled body
                        last = "invalid JSON body"
                    else:
                        if isinstance(body, dict):
                            return body, None
                        last = "JSON body is not an object"
            if attempt < cfg.max_attempts:
                await asyncio.sleep(retry_delay(attempt, retry_after, cfg, self._rng))
        return None, _redact(f"gave up after {cfg.max_attempts} attempts: {last}", key)


def _excerpt(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _redact(text: str, key: str | None) -> str:
    return text.replace(key, "***") if key else text


def _run_sync(coro: Any, name: str) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()
    raise SpilloverError(f"{name}_sync was called inside a running event loop (e.g. a notebook)",
                         fix=f"use `await judge.{name}(...)` there instead")


__all__ = ["JsonReply", "OpenAIJudge", "OpenAIJudgeConfig", "parse_retry_after", "retry_delay"]
