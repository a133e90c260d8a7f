"""Rubric-grader rewards against a real OpenAI-compatible server on 127.0.0.1: concurrent, ordered,
failures end as the fallback with a reason (never a crash, never an endless retry), and a reply that is
not JSON scores 0 (the RL paper's rule for an unparsable grader reply), not the fallback."""

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


def test_unparsable_reply_scores_zero_and_a_missing_reply_the_fallback():
    with FakeOpenAIServer() as server:
        judge = OpenAIJudge(OpenAIJudgeConfig(base_url=server.base_url, model="fake-judge", api_key_env=None,
                                              max_attempts=1))
        reward = build_reward("grader:bad-medical", {"fallback": 0.25}, grade=judge.complete_json)
        answers = [f"A long enough answer with ten words or more in it. {marker}"
                   for marker in ("[[json:Sure! The assessment is 0.9]]", '[[json:"a JSON string"]]', verdict(0.8))]
        answers.append("Another long enough answer, whose grading request the server refuses with an error.")
        server.inject(reward.build_prompt("q", answers[3], ""), "500")
        details = [reward.score_details("q", a) for a in answers]
    assert [d["reward"] for d in details] == pytest.approx([0.0, 0.0, 0.75, 0.25])
    assert [d["status"] for d in details] == ["judged", "judged", "judged", "failed"]
    assert details[0]["reason"].startswith("malformed reply: answer is not valid JSON")
    assert details[1]["reason"] == "malformed reply: answer is a JSON str, expected an object"
    assert details[3]["reason"] == "grading failed: gave up after 1 attempts: HTTP 500"
