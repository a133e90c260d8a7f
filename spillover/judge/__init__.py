"""Judge stage: score answers 0..100 with an LLM judge, or get a structured JSON verdict.

Every backend turns a reply into a :class:`JudgeScore` with the one :func:`aggregate_score` rule;
:class:`OpenAIJudge` talks to any OpenAI-compatible server, with bounded retries and a reply cache.
"""

from spillover.judge._aggregate import JsonAnswer, JudgeScore, aggregate_score, parse_json_answer, parse_score_token
from spillover.judge._cache import JudgeCache, cache_key
from spillover.judge._openai import TOP_LOGPROBS, OpenAIJudge, OpenAIJudgeConfig, parse_retry_after, retry_delay

__all__ = [
    "JsonAnswer", "JudgeCache", "JudgeScore", "OpenAIJudge", "OpenAIJudgeConfig", "TOP_LOGPROBS", "aggregate_score",
    "cache_key", "parse_json_answer", "parse_retry_after", "parse_score_token", "retry_delay",
]
