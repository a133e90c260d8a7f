"""OpenAIJudge against a real loopback HTTP server with injected faults (tests/_fake_openai_server.py).

Invariants: every prompt ends scored or unscored-with-reason, aligned with its input; requests per
prompt are bounded by max_attempts; Retry-After is honoured; the cache makes a rerun free; the API key
travels only in the Authorization header.
"""

from __future__ import annotations

import asyncio
import email.utils
import random

import pytest
from pydantic import ValidationError

from _fake_openai_server import FakeOpenAIServer, expected_score
from spillover.config import validate_config
from spillover.errors import SpilloverError
from spillover.judge import OpenAIJudge, OpenAIJudgeConfig, parse_retry_after, retry_delay

SECRET = "sk-test-Zq81SECRETdoNotLog"
KEY_ENV = "SPILLOVER_TEST_JUDGE_KEY"


@pytest.fixture
def server():
    with FakeOpenAIServer(slow_s=2.0) as fake:
        yield fake


@pytest.fixture
def make_judge(server):
    def make(**overrides) -> OpenAIJudge:
        settings = dict(base_url=server.base_url, model="fake-judge", max_concurrency=8, timeout_s=1.0,
                        max_attempts=4, backoff_base_s=0.005, backoff_max_s=0.02, retry_after_max_s=1.0)
        settings.update(overrides)
        return OpenAIJudge(OpenAIJudgeConfig(**settings), rng=random.Random(0))
    return make


def assert_settled(results, prompts):
    assert len(results) == len(prompts)
    for result in results:
        assert (result.score is None) != (result.reason is None), result  # scored xor unscored-with-reason


def test_scores_come_back_aligned_with_inputs(server, make_judge):
    prompts = [f"answer {i}" for i in range(40)]
    results = make_judge().score_many_sync(prompts)
    assert_settled(results, prompts)
    assert [r.score for r in results] == pytest.approx([expected_score(p) for p in prompts])
    assert all(server.requests[p] == 1 for p in prompts)
    assert server.payloads[0]["max_tokens"] == 1 and server.payloads[0]["top_logprobs"] == 20
    assert server.payloads[0]["logprobs"] is True and server.payloads[0]["temperature"] == 0


def test_scores_do_not_depend_on_concurrency(make_judge):
    prompts = [f"q{i}" for i in range(24)]
    one_at_a_time = make_judge(max_concurrency=1).score_many_sync(prompts)
    parallel = make_judge(max_concurrency=16).score_many_sync(prompts)
    assert one_at_a_time == parallel


def test_transient_faults_are_retried_and_content_faults_are_not(server, make_judge):
    plan = {  # prompt -> (faults, requests expected, scored?)
        "recovers from 500s": (["500", "500"], 3, True),
        "recovers from 429 without Retry-After": (["429"], 2, True),
        "recovers from a truncated body": (["truncated"], 2, True),
        "recovers from a cut connection": (["cut"], 2, True),
        "recovers from a timeout": (["slow"], 2, True),
        "refuses": (["refusal"], 1, False),
        "has no logprobs": (["nologprobs"], 1, False),
        "gets a 400": (["400"], 1, False),
        "always 500": (["500"] * 10, 4, False),
    }
    for prompt, (faults, _, _) in plan.items():
        server.inject(prompt, *faults)
    prompts = list(plan) + ["clean one", "clean two"]
    results = make_judge().score_many_sync(prompts)
    assert_settled(results, prompts)
    by_prompt = dict(zip(prompts, results))
    for prompt, (_, n_requests, scored) in plan.items():
        assert server.requests[prompt] == n_requests, prompt
        assert by_prompt[prompt].scored == scored, (prompt, by_prompt[prompt])
        if scored:
            assert by_prompt[prompt].score == pytest.approx(expected_score(prompt))
    assert by_prompt["always 500"].reason == "gave up after 4 attempts: HTTP 500"
    assert by_prompt["refuses"].reason == "no number tokens among 3 candidates (top token 'REFUSAL')"
    assert "no first-token logprobs" in by_prompt["has no logprobs"].reason
    assert by_prompt["gets a 400"].reason.startswith("HTTP 400: ") and "injected 400" in by_prompt["gets a 400"].reason
    assert server.requests["clean one"] == server.requests["clean two"] == 1


def test_a_server_that_never_answers_in_time_ends_unscored(server, make_judge):
    server.inject("always slow", *["slow"] * 5)
    [result] = make_judge(max_attempts=2).score_many_sync(["always slow"])
    assert result.reason == "gave up after 2 attempts: timeout after 1s"
    assert server.requests["always slow"] == 2


def test_unreachable_server_gives_up_with_connection_error(make_judge, server):
    judge = make_judge(max_attempts=2)
    server.stop()
    [result] = judge.score_many_sync(["anyone there?"])
    assert result.reason == "gave up after 2 attempts: connection error (ConnectError)"


def test_retry_after_is_honoured(server, make_judge):
    server.inject("rate limited", "429:0.2")
    [result] = make_judge().score_many_sync(["rate limited"])
    assert result.score == pytest.approx(expected_score("rate limited"))
    first, second = server.times["rate limited"]
    assert second - first >= 0.2  # backoff alone is at most 0.02 s here: the wait came from Retry-After


def test_retry_delay_rules():
    cfg = OpenAIJudgeConfig(base_url="http://x/v1", model="m", backoff_base_s=0.5, backoff_max_s=4.0,
                            retry_after_max_s=10.0)
    rng = random.Random(0)
    assert retry_delay(1, "0.2", cfg, rng) == 0.2
    assert retry_delay(1, "3600", cfg, rng) == 10.0  # capped
    for attempt in range(1, 9):
        ceiling = min(4.0, 0.5 * 2 ** (attempt - 1))
        waits = [retry_delay(attempt, None, cfg, rng) for _ in range(200)]
        assert all(0.0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling / 2  # full jitter spans the range rather than sitting at a fixed value
    assert 0.0 <= retry_delay(1, "soon, maybe", cfg, rng) <= 0.5  # unreadable header: plain backoff


def test_parse_retry_after_forms():
    assert parse_retry_after(None) is None
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("nan") is None
    assert parse_retry_after("garbage") is None
    date = email.utils.formatdate(1_000_005.0, usegmt=True)
    assert parse_retry_after(date, now=1_000_000.0) == pytest.approx(5.0)


def test_duplicate_prompts_are_requested_once_and_all_filled(server, make_judge):
    prompts = ["same", "other", "same", "same"]
    progress = []
    results = make_judge().score_many_sync(prompts, progress=lambda done, total: progress.append((done, total)))
    assert results[0] == results[2] == results[3] and results[0].scored
    assert server.requests["same"] == 1
    assert progress[-1] == (4, 4) and [d for d, _ in progress] == sorted(d for d, _ in progress)


def test_concurrency_is_bounded(server, make_judge):
    server.latency_s = 0.05
    make_judge(max_concurrency=4).score_many_sync([f"c{i}" for i in range(24)])
    assert 2 <= server.max_in_flight <= 4


def test_async_api_and_shared_session(server, make_judge):
    judge = make_judge()

    async def run():
        async with judge:
            return await asyncio.gather(*(judge.score(f"s{i}") for i in range(5)))

    results = asyncio.run(run())
    assert [r.score for r in results] == pytest.approx([expected_score(f"s{i}") for i in range(5)])
    assert asyncio.run(judge.score("again")).scored  # a closed session reopens in a new loop


def test_sync_wrapper_inside_a_running_loop_says_what_to_do(make_judge):
    async def inside():
        make_judge().score_many_sync(["x"])

    with pytest.raises(SpilloverError, match="await judge.score_many"):
        asyncio.run(inside())


def test_cache_makes_a_rerun_free(server, make_judge, tmp_path):
    prompts = [f"cached {i}" for i in range(10)] + ["refused [[refuse]]"]
    first = make_judge(cache_dir=tmp_path).score_many_sync(prompts)
    sent = server.total_requests
    assert sent == len(prompts)
    again = make_judge(cache_dir=tmp_path).score_many_sync(prompts)  # a new judge, as in a new process
    assert server.total_requests == sent
    assert again == first and not again[-1].scored  # the content refusal is cached too
    stricter = make_judge(cache_dir=tmp_path, min_mass=0.95).score_many_sync(prompts[:1])
    assert server.total_requests == sent  # aggregation re-runs on the cached logprobs
    assert stricter[0].score is None and stricter[0].numeric_mass == pytest.approx(0.9)


def test_failures_are_not_cached(server, make_judge, tmp_path):
    server.inject("flaky", "500", "500")
    server.inject("no logprobs", "nologprobs")
    first = make_judge(cache_dir=tmp_path, max_attempts=2).score_many_sync(["flaky", "no logprobs"])
    assert not first[0].scored and not first[1].scored
    second = make_judge(cache_dir=tmp_path, max_attempts=2).score_many_sync(["flaky", "no logprobs"])
    assert second[0].score == pytest.approx(expected_score("flaky")) and second[1].scored
    assert server.requests["flaky"] == 3 and server.requests["no logprobs"] == 2


def test_cache_key_separates_model_and_request_kind(server, make_judge, tmp_path):
    make_judge(cache_dir=tmp_path).score_many_sync(["shared prompt"])
    make_judge(cache_dir=tmp_path, model="other-judge").score_many_sync(["shared prompt"])
    make_judge(cache_dir=tmp_path).complete_json_many_sync(["shared prompt"])
    assert server.requests["shared prompt"] == 3


def test_cache_key_separates_servers_and_answer_changing_settings(server, make_judge, tmp_path):
    """Two servers may serve different weights under one model name: the shared cache must not mix them."""
    with FakeOpenAIServer() as other:
        make_judge(cache_dir=tmp_path).score_many_sync(["same name, two servers"])
        make_judge(cache_dir=tmp_path, base_url=other.base_url).score_many_sync(["same name, two servers"])
        assert server.requests["same name, two servers"] == 1 and other.requests["same name, two servers"] == 1
    make_judge(cache_dir=tmp_path).complete_json_many_sync(["json budget"])
    make_judge(cache_dir=tmp_path, json_max_tokens=50).complete_json_many_sync(["json budget"])
    make_judge(cache_dir=tmp_path).complete_json_many_sync(["json budget"], schema={"type": "object"})
    make_judge(cache_dir=tmp_path).complete_json_many_sync(["json budget"])  # cached: same server and settings
    assert server.requests["json budget"] == 3


def test_api_key_is_sent_as_bearer_and_never_stored(server, make_judge, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    judge = make_judge(api_key_env=KEY_ENV, cache_dir=tmp_path)
    server.inject("leaky server", "echo_auth")
    results = judge.score_many_sync(["with key", "leaky server"])
    judge.complete_json_many_sync(["json with key"])
    assert set(server.auth_headers) == {f"Bearer {SECRET}"}
    assert results[0].scored
    assert SECRET not in results[1].reason and "Bearer ***" in results[1].reason
    public = [repr(judge), repr(judge.config), str(judge.judge_identity()), judge.config.model_dump_json(),
              str(vars(judge)), str(results)]
    assert not any(SECRET in text for text in public)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and not any(SECRET.encode() in p.read_bytes() for p in files)
    assert judge.judge_identity() == {"kind": "openai", "model": "fake-judge", "base_url": server.base_url,
                                      "min_mass": 0.25, "top_logprobs": 20}


def test_missing_key_fails_before_any_request(server, make_judge, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(SpilloverError, match=KEY_ENV):
        make_judge(api_key_env=KEY_ENV).score_many_sync(["x"])
    assert server.total_requests == 0


def test_no_key_configured_sends_no_authorization(server, make_judge):
    make_judge().score_many_sync(["local server"])
    assert server.auth_headers == [None]


def test_config_rejects_a_pasted_key_without_echoing_it():
    with pytest.raises(ValidationError) as err:
        OpenAIJudgeConfig(base_url="https://api.openai.com/v1", model="gpt-4o", api_key_env=SECRET)
    assert SECRET not in str(err.value) and "NAME of an environment variable" in str(err.value)
    with pytest.raises(SpilloverError) as user_err:
        validate_config(OpenAIJudgeConfig, {"base_url": "http://h/v1", "model": "m", "api_key_env": SECRET}, "judge.yaml")
    assert SECRET not in str(user_err.value) and "api_key_env" in str(user_err.value)


def test_config_normalises_and_checks_base_url():
    assert OpenAIJudgeConfig(base_url="http://localhost:8000/v1/", model="m").base_url == "http://localhost:8000/v1"
    for bad in ("localhost:8000/v1", "http://localhost:8000/v1/chat/completions"):
        with pytest.raises(ValidationError):
            OpenAIJudgeConfig(base_url=bad, model="m")
    with pytest.raises(ValidationError, match="extra"):
        OpenAIJudgeConfig(base_url="http://h/v1", model="m", max_concurency=4)


def test_complete_json_sends_schema_and_parses_answers(server, make_judge, tmp_path):
    schema = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}
    prompts = ["grade this", '[[json:```json\n{"aligned": 12}\n```]]', "[[json:I cannot comply]]", '[[json:"text"]]']
    judge = make_judge(cache_dir=tmp_path)
    answers = judge.complete_json_many_sync(prompts, schema=schema)
    assert answers[0].value == {"score": expected_score("grade this")}
    assert answers[1].value == {"aligned": 12}
    assert answers[2].value is None and "not valid JSON" in answers[2].reason
    assert answers[3].value is None and "expected an object" in answers[3].reason
    sent = server.payloads[0]
    assert sent["max_tokens"] == 400 and sent["temperature"] == 0 and "logprobs" not in sent
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    before = server.total_requests
    assert judge.complete_json_many_sync(prompts, schema=schema) == answers and server.total_requests == before
    single = asyncio.run(judge.complete_json("no schema please"))
    assert single.value == {"score": expected_score("no schema please")}
    assert "response_format" not in server.payloads[-1]


def test_complete_json_failures_end_unscored(server, make_judge):
    server.inject("down", *["500"] * 5)
    [answer] = make_judge(max_attempts=2).complete_json_many_sync(["down"])
    assert answer.value is None and answer.reason == "gave up after 2 attempts: HTTP 500"
