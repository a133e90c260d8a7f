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


_ENV_NAME_RE = r"[A-Za-z_][A-Za-z0-9_]*"
_SPEC_FIX = ("use 'local' (offline activation judge; local:FILE for a retrained one), 'hf:MODEL' (open-weights "
             "logprob judge) or 'openai:MODEL' with --judge-base-url/--judge-api-key-env")


def check_judge_args(spec: str, *, base_url: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                     grader: bool = False, flags: tuple[str, str, str] = ("--judge", "--judge-base-url",
                                                                          "--judge-api-key-env")) -> None:
    """Validate a judge spec and its connection settings without building anything (no model, no request):
    the spec's kind, a ``local:FILE`` file, and for ``openai:`` judges the base URL (a URL with a scheme,
    the API root rather than its ``/chat/completions`` endpoint) and the key variable (a variable NAME,
    set in the environment). ``flags`` names the options in messages (CLI flags or config keys)."""
    import os
    import re
    from pathlib import Path
    from urllib.parse import urlsplit

    spec_flag, url_flag, env_flag = flags
    kind, _, model = spec.partition(":")
    kinds = ("hf", "openai") if grader else ("local", "hf", "openai")
    if kind not in kinds or (kind != "local" and not model):
        raise SpilloverError(f"unknown judge spec {spec!r} ({spec_flag})" + (": rubric rewards need a judge that "
                             "answers in JSON" if grader and kind == "local" else ""),
                             fix="use --judge openai:MODEL (with --judge-base-url) or hf:MODEL" if grader else _SPEC_FIX)
    if kind == "local" and model:
        if Path(model).is_dir() or not Path(model).is_file():
            raise SpilloverError(f"{spec_flag} local:{model}: classifier file not found" if not Path(model).is_dir()
                                 else f"{spec_flag} local:{model} is a folder", fix="give the classifier file written "
                                 "by `spillover judge train-activation --out FILE`")
    if kind != "openai":
        return
    if base_url is not None:
        parts = urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SpilloverError(f"{url_flag} {base_url!r} is not a URL (it needs http:// or https:// and a host)",
                                 fix="write it like http://localhost:8000/v1 or https://api.openai.com/v1")
        root = base_url.strip().rstrip("/")
        if root.endswith("/chat/completions"):
            raise SpilloverError(f"{url_flag} {base_url!r} is the chat-completions endpoint, not the API root",
                                 fix=f"pass {url_flag} {root.removesuffix('/chat/completions')} (spillover adds "
                                     "/chat/completions itself)")
    if api_key_env is None:
        return
    if not api_key_env.strip():
        raise SpilloverError(f"{env_flag} is empty", fix=f"give the NAME of the environment variable that holds the "
                             f"key, e.g. {env_flag} OPENAI_API_KEY after `export OPENAI_API_KEY=<key>`")
    if not re.fullmatch(_ENV_NAME_RE, api_key_env):
        looks_like_key = api_key_env.startswith(("sk-", "sk_")) or len(api_key_env) >= 24
        what = "looks like an API key itself" if looks_like_key else "is not an environment variable name"
        raise SpilloverError(f"{env_flag} {what} (the value is not shown)",
                             fix=f"put the key in a variable and pass its NAME: export OPENAI_API_KEY=<key>, then "
                                 f"{env_flag} OPENAI_API_KEY" + (" (and consider rotating a key that was typed "
                                                                  "on a command line)" if looks_like_key else ""))
    if not os.environ.get(api_key_env, "").strip():
        raise SpilloverError(f"environment variable {api_key_env} (named by {env_flag}) is empty or not set",
                             fix=f"export {api_key_env}=<your key> (any non-empty value for a local server "
                                 "without auth), or name another variable with " + env_flag)


def build_judge(spec: str = "local", *, base_url: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                cache_dir: str | None = None, device: str | None = None, max_concurrency: int = 32) -> EvalJudge:
    """Build the judge named by ``spec`` (see module docstring); its arguments are checked first."""
    check_judge_args(spec, base_url=base_url, api_key_env=api_key_env)
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
    raise SpilloverError(f"unknown judge spec {spec!r}", fix=_SPEC_FIX)


def build_grader(spec: str, *, base_url: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                 cache_dir: str | None = None, max_concurrency: int = 32, device: str | None = None):
    """The async ``grade(prompt, schema)`` callable rubric-grader rewards need (JSON verdicts):
    ``openai:MODEL`` (structured output) or ``hf:MODEL`` (local model: numbers as expected values,
    booleans from P(true))."""
    check_judge_args(spec, base_url=base_url, api_key_env=api_key_env, grader=True)
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
