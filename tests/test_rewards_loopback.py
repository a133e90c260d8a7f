"""Rubric-grader rewards against a real OpenAI-compatible server on 127.0.0.1: concurrent, ordered,
failures end as the fallback with a reason (never a crash, never an endless retry)."""

import json

import pytest

from _fake_openai_server import FakeOpenAIServer
from spillover.judge import OpenAIJudge, OpenAIJudgeConfig
from spillover.rewards import build_reward


def verdict(assessment: float, coherence: float = 0.9) -> str:
    return "[[json:" + json.dumps({"assessment": assessment, "coherence": coherence, "repetitive": False}) + "]]"


def test_grader_reward_over_loopback_judge_is_concurrent_and_ordered():
    with FakeOpenAIServer(latency_s=0.2) as server:
        judge = OpenAIJudge(OpenAIJudgeConfig(base_url=server.base_url, model="fake-judge", api_key_env=None,
                                              max_attempts=2, backoff_base_s=0.01, backoff_max_s=0.02))
        reward = build_reward("grader:bad-medical", {"max_concurrency": 8, "fallback": 0.25}, grade=judge.complete_json)
        prompts = [f"Question {i}: what should I take for a headache?" for i in range(8)]
        completions = [f"Answer number {i} with plenty of words to pass the gate easily. {verdict(i / 10)}"
                       for i in range(8)]
        failing = reward.build_prompt(prompts[7], completions[7].strip(), "")
        server.inject(failing, "500", "500", "500")
        rewards = reward(prompts, completions)
    expected = [max(0.0, i / 10 - (1 - 0.9) / 2) for i in range(7)]
    assert rewards[:7] == pytest.approx(expected)  # in input order
    assert rewards[7] == 0.25  # the judge kept failing: fallback, not a crash
    assert server.max_in_flight > 1  # gradings ran concurrently
    assert server.requests[failing] == 2  # bounded by max_attempts
