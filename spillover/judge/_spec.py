"""The judge an evaluation uses, chosen by a ``--judge`` spec, behind one small interface.

- ``local`` (default; offline): the activation judge on the embedded model for "aligned" and the
  base model's likelihood-based coherence score for "coherent" (no prompts involved);
  ``local:FILE`` uses a classifier file from ``spillover judge train-activation``;
- ``hf:MODEL``: the logprob LLM judge on an open-weights chat model (exact expected 0-100 score);
- ``openai:MODEL``: an OpenAI-compatible endpoint (``base_url``; key read from the env var *named*
  by ``api_key_env``, never stored).
LLM judges render each metric's template (the question file's ``judge_prompts`` win over
spillover's own) and score all prompts in one batched call.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from spillover.errors import SpilloverError
from spillover.judge._aggregate import JudgeScore
from spillover.judge.prompts import DEFAULT_PROMPTS, prompt_sha, render_prompt

METRICS = ("aligned", "coherent")


@dataclass
class JudgeItem:
    question: str
    answer: str
    reasoning: str = ""
    prompts: dict[str, str] = field(default_factory=dict)  # metric -> template overriding the default


@dataclass
class Judgment:
    aligned: JudgeScore
    coherent: JudgeScore


class EvalJudge(abc.ABC):
    """Scores (question, answer) items on the "aligned" and "coherent" metrics."""

    @abc.abstractmethod
    def judge(self, items: Sequence[JudgeItem], progress: Callable[[int], None] | None = None) -> list[Judgment]:
        ...

    @abc.abstractmethod
    def identity(self) -> dict:
        """Who judged, with what prompts: written into every result."""


class PromptedJudge(EvalJudge):
    """An LLM judge: one prompt per (item, metric), scored by ``score_many(prompts) -> list[JudgeScore]``."""

    def __init__(self, score_many: Callable[[list[str]], list[JudgeScore]], backend_identity: dict):
        self._score_many, self._backend_identity = score_many, backend_identity
        self._custom_prompts: dict[str, str] = {}

    def judge(self, items, progress=None):
        prompts = []
        for item in items:
            for metric in METRICS:
                template = item.prompts.get(metric) or DEFAULT_PROMPTS[metric]
                if metric in item.prompts:
                    self._custom_prompts[prompt_sha(template)] = template
                prompts.append(render_prompt(template, item.question, item.answer, item.reasoning))
        scores = self._score_many(prompts)
        if progress:
            progress(len(items))
        return [Judgment(scores[2 * k], scores[2 * k + 1]) for k in range(len(items))]

    def identity(self) -> dict:
        return {**self._backend_identity, "prompts": dict(DEFAULT_PROMPTS),
                "prompt_sha": {m: prompt_sha(p) for m, p in DEFAULT_PROMPTS.items()},
                "question_file_prompts": dict(self._custom_prompts), "limits": None}


class ActivationEvalJudge(EvalJudge):
    """The offline default: activation classifier (aligned) + likelihood coherence (coherent)."""

    def __init__(self, aligned_judge, coherence_scorer):
        self.aligned_judge, self.coherence = aligned_judge, coherence_scorer

    def judge(self, items, progress=None):
        questions = [i.question for i in items]
        answers = [i.answer for i in items]
        aligned = self.aligned_judge.score_many(questions, answers)
        coherent = self.coherence.score_many(questions, answers)
        if progress:
            progress(len(items))
        return [Judgment(a, c) for a, c in zip(aligned, coherent)]

    def identity(self) -> dict:
        return {**self.aligned_judge.judge_identity(), "coherence": self.coherence.judge_identity(),
                "prompts": None, "limits": self.aligned_judge.limits()}


def default_cache_dir() -> str:
    """The shared reply cache for API judges (keyed by judge model and full prompt): reruns are free."""
    from spillover.models import spillover_home

    return str(spillover_home() / "judge_cache")


def build_judge(spec: str = "local", *, base_url: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                cache_dir: str | None = None, device: str | None = None, max_concurrency: int = 32) -> EvalJudge:
    """Build the judge named by ``spec`` (see module docstring)."""
    kind, _, model = spec.partition(":")
    if kind == "local":  # local, or local:FILE for a retrained classifier file
        from spillover.judge._coherence import CoherenceScorer
        from spillover.judge.activation import ActivationJudge

        aligned = ActivationJudge.load(model or None, device=device)
        coherence = CoherenceScorer(aligned.model, aligned.tokenizer, aligned.model_ref, model or None)
        return ActivationEvalJudge(aligned, coherence)
    if kind == "hf" and model:
        from spillover.judge._local_hf import LocalHFJudge, LocalHFJudgeConfig

        judge = LocalHFJudge.from_config(LocalHFJudgeConfig(model=model, device=device or "auto"))
        return PromptedJudge(judge.score_many, judge.judge_identity())
    if kind == "openai" and model:
        from spillover.judge._openai import OpenAIJudge, OpenAIJudgeConfig

        if not base_url:
            base_url = "https://api.openai.com/v1"
        judge = OpenAIJudge(OpenAIJudgeConfig(base_url=base_url, model=model, api_key_env=api_key_env,
                                              cache_dir=cache_dir or default_cache_dir(),
                                              max_concurrency=max_concurrency))
        return PromptedJudge(judge.score_many_sync, judge.judge_identity())
    raise SpilloverError(f"unknown judge spec {spec!r}",
                         fix="use 'local' (offline activation judge; local:FILE for a retrained one), 'hf:MODEL' (open-weights logprob judge) "
                             "or 'openai:MODEL' with --judge-base-url/--judge-api-key-env")


def build_grader(spec: str, *, base_url: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                 cache_dir: str | None = None, max_concurrency: int = 32, device: str | None = None):
    """The async ``grade(prompt, schema)`` callable rubric-grader rewards need (JSON verdicts):
    ``openai:MODEL`` (structured output) or ``hf:MODEL`` (local model: numbers as expected values,
    booleans from P(true))."""
    kind, _, model = spec.partition(":")
    if kind == "hf" and model:
        from spillover.judge._local_json import LocalJsonGrader, LocalJsonGraderConfig

        return LocalJsonGrader.from_config(LocalJsonGraderConfig(model=model, device=device or "auto")).grade
    if kind == "openai" and model:
        from spillover.judge._openai import OpenAIJudge, OpenAIJudgeConfig

        judge = OpenAIJudge(OpenAIJudgeConfig(base_url=base_url or "https://api.openai.com/v1", model=model,
                                              api_key_env=api_key_env, cache_dir=cache_dir or default_cache_dir(),
                                              max_concurrency=max_concurrency))
        return judge.complete_json
    raise SpilloverError(f"judge {spec!r} cannot grade rubric rewards (JSON verdicts)",
                         fix="use --judge openai:MODEL with --judge-base-url (OpenAI, vLLM, Ollama or llama.cpp "
                             "server), or hf:MODEL for a local open-weights grader")
