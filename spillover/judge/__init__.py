"""Judge stage: score answers 0..100 ("aligned", "coherent") or get a structured JSON verdict.

Backends: :class:`OpenAIJudge` (any OpenAI-compatible server: bounded retries, Retry-After, cache),
:class:`LocalHFJudge` (exact expected 0..100 score on an open-weights model via a digit trie),
:class:`ActivationJudge` + :class:`CoherenceScorer` (the offline default on the embedded model) and
:class:`LocalJsonGrader` (JSON verdicts for RL reward graders on a local model). Every logprob
backend turns its distribution into a :class:`JudgeScore` with the one :func:`aggregate_score` rule.
:func:`build_judge` / :func:`build_grader` pick one from a ``--judge`` spec.
"""

from spillover.judge._activation_train import load_labelled_answers, train_activation_judge
from spillover.judge._aggregate import JsonAnswer, JudgeScore, aggregate_score, parse_json_answer, parse_score_token
from spillover.judge._cache import JudgeCache, cache_key
from spillover.judge._coherence import CoherenceScorer, fit_coherence_calibration
from spillover.judge._local_hf import LocalHFJudge, LocalHFJudgeConfig, score_bruteforce
from spillover.judge._local_json import GradedJson, LocalJsonGrader, LocalJsonGraderConfig
from spillover.judge._openai import TOP_LOGPROBS, OpenAIJudge, OpenAIJudgeConfig, parse_retry_after, retry_delay
from spillover.judge._spec import EvalJudge, JudgeItem, Judgment, build_grader, build_judge
from spillover.judge.activation import (
    SHIPPED_PATH,
    ActivationJudge,
    activation_limits,
    answer_features,
    read_judge_file,
)
from spillover.judge.prompts import ALIGNED_PROMPT, COHERENT_PROMPT, DEFAULT_PROMPTS, render_prompt

__all__ = [
    "ALIGNED_PROMPT", "COHERENT_PROMPT", "DEFAULT_PROMPTS", "SHIPPED_PATH", "ActivationJudge", "CoherenceScorer",
    "EvalJudge", "GradedJson", "JsonAnswer", "JudgeCache", "JudgeItem", "JudgeScore", "Judgment", "LocalHFJudge",
    "LocalHFJudgeConfig", "LocalJsonGrader", "LocalJsonGraderConfig", "OpenAIJudge", "OpenAIJudgeConfig",
    "TOP_LOGPROBS", "activation_limits", "aggregate_score", "answer_features", "build_grader", "build_judge",
    "cache_key", "fit_coherence_calibration", "load_labelled_answers", "parse_json_answer", "parse_retry_after",
    "parse_score_token", "read_judge_file", "render_prompt", "retry_delay", "score_bruteforce",
    "train_activation_judge",
]
