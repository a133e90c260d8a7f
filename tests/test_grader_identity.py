"""A GRPO run records who graded its rubric rewards, for every grader backend (manifest ``judge``)."""

from __future__ import annotations

import functools

from spillover.judge import OpenAIJudge, OpenAIJudgeConfig, build_grader
from spillover.train.grpo import _judge_identity


def test_hf_grader_identity_is_recorded(tiny_model_dir):
    grade = build_grader(f"hf:{tiny_model_dir}", device="cpu")
    ident = _judge_identity(grade)
    assert ident is not None and ident["kind"] == "local_hf_json" and ident["model"] == str(tiny_model_dir)
    assert ident == grade.__self__.judge_identity()


def test_openai_grader_identity_is_recorded():
    judge = OpenAIJudge(OpenAIJudgeConfig(base_url="http://127.0.0.1:9/v1", model="judge-x", api_key_env=None))
    assert _judge_identity(judge.complete_json) == judge.judge_identity()
    assert _judge_identity(functools.partial(judge.complete_json)) == judge.judge_identity()


async def my_grade(prompt, schema, strict=True):
    return None, "unused"


def test_any_other_grade_callable_is_named_and_no_judge_is_none():
    assert _judge_identity(my_grade) == {"kind": "callable", "name": f"{__name__}.my_grade"}
    assert _judge_identity(functools.partial(my_grade, strict=False))["name"].endswith(".my_grade")
    assert _judge_identity(None) is None
