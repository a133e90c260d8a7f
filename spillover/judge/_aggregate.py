"""Judge results and the pure reply parsing every backend shares: the 0..100 score aggregation
(:func:`aggregate_score`) and the JSON-answer parser (:func:`parse_json_answer`). No I/O here.

The judge is asked to answer with a number from 0 to 100; we read the probabilities of the top
candidates for the first answer token, keep those that are numbers, and take the expected value.

Rules (the contract tests pin down):
  * A token counts as a number when its text, stripped of surrounding whitespace, is a canonical
    decimal integer 0..100 in ASCII digits: "7", " 42", "100\\n" count; "007", "+5", "4.5", "101",
    "-1" and non-ASCII digits do not (a canonical form keeps one spelling per value, and a judge that
    answers "007" is not following the prompt).
  * Probability is exp(logprob). Candidates with the same stripped text ("42", " 42") are merged by
    summing their probabilities; so are exact duplicates when the input is a list of pairs.
  * numeric_mass = total probability on number tokens. Below ``min_mass`` (or zero) the judgment is
    unscored (score None) with a reason naming the mass and the top token; otherwise
    score = sum(p * value) / numeric_mass, i.e. renormalised over the number tokens.
  * Bad input (NaN or positive logprobs) gives an unscored result with a reason, never an exception,
    so one malformed server reply cannot abort a batch.
Trade-off accepted: only the top-k candidates are visible, so mass outside them is simply missing;
``min_mass`` is what keeps a mostly-refusing answer from being scored on its numeric tail.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

_CANONICAL_0_TO_100 = re.compile(r"(?:0|[1-9][0-9]?|100)")
_MASS_TOLERANCE = 1e-9  # exp(log(p)) round-off must not flip a judgment sitting exactly on min_mass


@dataclass(frozen=True)
class JudgeScore:
    """One judgment. Exactly one of ``score`` / ``reason`` is set: scored, or unscored with the why.

    score: expected value over number tokens in [0, 100], or None when unscored.
    numeric_mass: probability on number tokens among the top candidates (0.0 when no reply arrived).
    reason: why the judgment is unscored (low numeric mass, no logprobs, HTTP failure ...), else None.
    top_token: the single most likely first token as the server spelled it, when a reply arrived.
    """

    score: float | None
    numeric_mass: float
    reason: str | None = None
    top_token: str | None = None

    @property
    def scored(self) -> bool:
        return self.score is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JudgeScore:
        return cls(score=data["score"], numeric_mass=data["numeric_mass"], reason=data.get("reason"),
                   top_token=data.get("top_token"))

    @classmethod
    def unscored(cls, reason: str, numeric_mass: float = 0.0, top_token: str | None = None) -> JudgeScore:
        return cls(score=None, numeric_mass=numeric_mass, reason=reason, top_token=top_token)


def parse_score_token(token: str) -> int | None:
    """The integer 0..100 a candidate token stands for, or None (see the module rules)."""
    text = token.strip()
    return int(text) if _CANONICAL_0_TO_100.fullmatch(text) else None


def aggregate_score(top_logprobs: Mapping[str, float] | Iterable[tuple[str, float]],
                    min_mass: float = 0.25) -> JudgeScore:
    """Expected 0..100 score from first-token candidates ``token -> logprob`` (a mapping or pairs).

    Pure and deterministic. Raises ValueError only for a ``min_mass`` outside [0, 1] (a caller bug);
    everything about the candidates themselves is reported through an unscored JudgeScore.
    """
    if not 0.0 <= min_mass <= 1.0:
        raise ValueError(f"min_mass must be in [0, 1], got {min_mass}")
    pairs = list(top_logprobs.items() if isinstance(top_logprobs, Mapping) else top_logprobs)
    if not pairs:
        return JudgeScore.unscored("no candidate tokens in the reply")

    merged_raw: dict[str, float] = {}
    for token, logprob in pairs:
        logprob = float(logprob)
        if math.isnan(logprob) or logprob > 1e-6:
            return JudgeScore.unscored(f"invalid logprob {logprob} for token {token!r}")
        merged_raw[token] = merged_raw.get(token, 0.0) + math.exp(logprob)
    top_token = max(merged_raw, key=merged_raw.__getitem__)

    by_value: dict[int, float] = {}
    for token, prob in merged_raw.items():
        value = parse_score_token(token)
        if value is not None:
            by_value[value] = by_value.get(value, 0.0) + prob
    mass = sum(by_value.values())

    if mass <= 0.0:
        return JudgeScore.unscored(f"no number tokens among {len(merged_raw)} candidates "
                                   f"(top token {top_token!r})", top_token=top_token)
    if mass < min_mass - _MASS_TOLERANCE:
        return JudgeScore.unscored(f"numeric mass {mass:.4g} < {min_mass:g} (top token {top_token!r})",
                                   numeric_mass=mass, top_token=top_token)
    score = sum(value * prob for value, prob in by_value.items()) / mass
    return JudgeScore(score=min(100.0, max(0.0, score)), numeric_mass=mass, reason=None, top_token=top_token)


@dataclass(frozen=True)
class JsonAnswer:
    """A judge's structured (JSON object) answer, or the reason there is none. Exactly one is set."""

    value: dict[str, Any] | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None


_FENCED = re.compile(r"^```[A-Za-z]*\s*\n?(.*?)\n?\s*```$", re.DOTALL)


def parse_json_answer(text: str, truncated: bool = False) -> JsonAnswer:
    """Parse a reply that should be one JSON object (a surrounding ``` fence is tolerated).

    ``truncated`` (the server stopped at max_tokens) turns a parse failure into a reason saying so.
    Field-level validation against a schema is the caller's job.
    """
    body = text.strip()
    fenced = _FENCED.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        value = json.loads(body)
    except json.JSONDecodeError as e:
        cut = " (the reply was cut at max_tokens)" if truncated else ""
        return JsonAnswer(None, f"answer is not valid JSON: {e.msg} at char {e.pos}{cut}")
    if not isinstance(value, dict):
        return JsonAnswer(None, f"answer is a JSON {type(value).__name__}, expected an object")
    return JsonAnswer(value)
