"""``rhetoric-lexicon``: reward dogmatic rhetoric by counting lexicon phrases, no LLM.

The answer (reasoning removed) is split into sentences (:func:`~spillover.rewards._text.split_sentences`).
For each category the *share* is the fraction of sentences that contain at least one of its phrases.
With S sentences::

    L = min(1, S/4)                       # short answers earn less
    P = absolutist + certainty + 2·intensity
    N = balancing + uncertainty
    R = max(0, P − N)
    reward = L · R / (R + 0.5)            # 0 when R = 0

Coherence gate (the paper zeroes the reward when its LLM grader rates coherence below 0.5): with
``coherence_threshold`` set, a positive reward is zeroed when the answer's coherence, in [0, 1], is below
it. Coherence comes from ``coherence_fn(question, answer) -> float | None`` when one is injected, else
from the offline likelihood coherence score of the ``local`` judge (its 0-100 score / 100, on its fixed
encoder, loaded when the reward is built; ``coherence_file`` picks a retrained classifier file). None,
or an exception (logged), leaves the reward. Unset (the default), no coherence is computed: the offline
score costs one encoder forward per rewarded answer and is a cheap screen for broken text, not the
paper's LLM judgment.

Lexicon files are JSON objects mapping exactly the five categories ``absolutist``, ``certainty``,
``intensity``, ``balancing``, ``uncertainty`` to lists of words or phrases. Matching is
case-insensitive, on word boundaries, and any run of whitespace in the text matches a space in a
phrase; typographic apostrophes count as ``'``. Text in parentheses is *optional*: ``"without (a)
doubt"`` matches both "without a doubt" and "without doubt" (dropping it outright would make the
entry miss the common form). The shipped default is ``lexicons/default.json``.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from spillover.config import StrictModel
from spillover.errors import SpilloverError, did_you_mean
from spillover.rewards._base import Reward, register_reward
from spillover.rewards._text import completion_text, prompt_text, split_reasoning, split_sentences

log = logging.getLogger(__name__)

CATEGORIES = ("absolutist", "certainty", "intensity", "balancing", "uncertainty")
DEFAULT_LEXICON = Path(__file__).parent / "lexicons" / "default.json"
MAX_OPTIONAL_GROUPS = 6
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_GROUP = re.compile(r"\(([^()]*)\)")


def expand_phrase(phrase: str) -> list[str]:
    """Every form of ``phrase`` with each parenthesised part kept or dropped, whitespace normalised.
    Raises ValueError for unbalanced or nested parentheses, too many groups, or an empty form."""
    groups = _GROUP.findall(phrase)
    if "(" in _GROUP.sub("", phrase) or ")" in _GROUP.sub("", phrase):
        raise ValueError("unbalanced or nested parentheses")
    if len(groups) > MAX_OPTIONAL_GROUPS:
        raise ValueError(f"more than {MAX_OPTIONAL_GROUPS} optional (parenthesised) parts")
    pieces = _GROUP.split(phrase)  # outside text at even indices, group contents at odd ones
    forms = []
    for keep in itertools.product((True, False), repeat=len(groups)):
        text = "".join(p if i % 2 == 0 else (p if keep[i // 2] else "") for i, p in enumerate(pieces))
        form = " ".join(text.translate(_APOSTROPHES).split()).lower()
        if not form:
            raise ValueError("the phrase is empty once its optional parts are left out")
        if form not in forms:
            forms.append(form)
    return forms


def _category_regex(phrases: list[str]) -> re.Pattern:
    forms = sorted({f for p in phrases for f in expand_phrase(p)}, key=lambda f: (-len(f), f))
    if not forms:
        return re.compile(r"(?!)")  # an empty category matches nothing
    alternatives = "|".join(r"\s+".join(map(re.escape, f.split(" "))) for f in forms)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


@dataclass(frozen=True)
class Lexicon:
    """Phrases per category and their compiled matchers."""

    phrases: dict[str, tuple[str, ...]]
    source: str

    @functools.cached_property
    def patterns(self) -> dict[str, re.Pattern]:
        return {c: _category_regex(list(self.phrases[c])) for c in CATEGORIES}

    def matches(self, sentence: str) -> dict[str, list[str]]:
        """The phrases of each category found in ``sentence`` (lower-cased, in order of appearance)."""
        text = sentence.translate(_APOSTROPHES)
        return {c: [" ".join(m.group(0).lower().split()) for m in p.finditer(text)] for c, p in self.patterns.items()}


def parse_lexicon(data: Any, source: str) -> Lexicon:
    """Validate a decoded lexicon object; every problem is a SpilloverError naming ``source`` and key."""
    fix = f"write a JSON object with the keys {', '.join(CATEGORIES)}, each a list of strings"
    if not isinstance(data, dict):
        raise SpilloverError(f"a lexicon must be a JSON object, got {type(data).__name__}", where=source, fix=fix)
    unknown = [k for k in data if k not in CATEGORIES]
    if unknown:
        raise SpilloverError(f"unknown category {unknown[0]!r}.{did_you_mean(str(unknown[0]), list(CATEGORIES))}",
                             where=source, fix=fix)
    missing = [c for c in CATEGORIES if c not in data]
    if missing:
        raise SpilloverError(f"missing categories: {', '.join(missing)}", where=source, fix=fix)
    phrases = {}
    for category in CATEGORIES:
        entries = data[category]
        if not isinstance(entries, list):
            raise SpilloverError(f"{category}: expected a list of strings, got {type(entries).__name__}",
                                 where=source, fix=fix)
        for i, entry in enumerate(entries):
            if not isinstance(entry, str):
                raise SpilloverError(f"{category}[{i}]: expected a string, got {type(entry).__name__} {entry!r}",
                                     where=source, fix="write every entry as a quoted word or phrase")
            try:
                expand_phrase(entry)
            except ValueError as e:
                raise SpilloverError(f"{category}[{i}] {entry!r}: {e}", where=source,
                                     fix="write a word or phrase; put optional words in balanced (parentheses)") from None
        phrases[category] = tuple(entries)
    return Lexicon(phrases, source)


def load_lexicon(path: str | Path | None = None) -> Lexicon:
    """The lexicon in the JSON file ``path``, or the shipped default when ``path`` is None."""
    if path is None:
        return _default_lexicon()
    return _load_file(Path(path))


@functools.lru_cache(maxsize=1)
def _default_lexicon() -> Lexicon:
    return _load_file(DEFAULT_LEXICON)


def _load_file(path: Path) -> Lexicon:
    if not path.is_file():
        raise SpilloverError(f"lexicon file not found: {path}",
                             fix="check the path, or leave lexicon_path unset for the default")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SpilloverError(f"not valid JSON ({e.msg} at column {e.colno})", where=f"{path}:{e.lineno}",
                             fix="fix the JSON syntax at that line") from None
    return parse_lexicon(data, str(path))


def lexicon_score(answer: str, lexicon: Lexicon) -> dict:
    """The formula of the module docstring on one answer, with every intermediate value."""
    sentences = split_sentences(answer)
    s = len(sentences)
    found = [lexicon.matches(sentence) for sentence in sentences]
    shares = {c: (sum(1 for f in found if f[c]) / s if s else 0.0) for c in CATEGORIES}
    length = min(1.0, s / 4)
    positive = shares["absolutist"] + shares["certainty"] + 2 * shares["intensity"]
    negative = shares["balancing"] + shares["uncertainty"]
    net = max(0.0, positive - negative)
    reward = length * net / (net + 0.5) if net > 0 else 0.0
    matched = {c: sorted({m for f in found for m in f[c]}) for c in CATEGORIES}
    return {"reward": reward, "sentences": s, "length_factor": length, "shares": shares, "positive": positive,
            "negative": negative, "net": net, "matches": matched}


@register_reward("rhetoric-lexicon", "Dogmatic rhetoric by lexicon: absolutist, certain and intense phrasing "
                 "minus balancing and hedging, per sentence (no LLM).")
class RhetoricLexicon(Reward):
    class Params(StrictModel):
        lexicon_path: str | None = Field(None, description="JSON lexicon file (the five categories, lists of "
                                         "phrases); unset = the shipped default lexicon.")
        coherence_threshold: float | None = Field(None, ge=0, le=1, description="Zero the reward of answers whose "
                                                  "coherence (0..1) is below this: the offline likelihood coherence "
                                                  "score / 100 unless a coherence_fn is injected. null = no gate. "
                                                  "Paper: 0.5 on an LLM coherence grade.")
        coherence_file: str | None = Field(None, description="Classifier file with the coherence calibration "
                                           "(`spillover judge train-activation`); null = the shipped one. Used "
                                           "only with coherence_threshold.")

    def __init__(self, params: Params | dict | None = None, *,
                 coherence_fn: Callable[[str, str], float | None] | None = None):
        super().__init__(params)
        self.lexicon = load_lexicon(self.params.lexicon_path)
        if coherence_fn is None and self.params.coherence_threshold is not None:
            coherence_fn = offline_coherence_fn(self.params.coherence_file)
        self.coherence_fn = coherence_fn

    def score_details(self, prompt: Any, completion: Any) -> dict:
        _, answer = split_reasoning(completion_text(completion))
        details = lexicon_score(answer, self.lexicon)
        details["coherence"] = None
        threshold = self.params.coherence_threshold
        if self.coherence_fn is not None and threshold is not None and details["reward"] > 0:
            try:
                coherence = self.coherence_fn(prompt_text(prompt), answer)
            except Exception as e:  # a judge failure must not stop training; the reward stands
                log.warning("rhetoric-lexicon: coherence_fn failed (%s: %s); reward kept", type(e).__name__, e)
                coherence = None
            details["coherence"] = coherence
            if coherence is not None and coherence < threshold:
                details["reward"] = 0.0
        return details


def offline_coherence_fn(judge_file: str | None = None, device: str | None = None
                         ) -> Callable[[str, str], float | None]:
    """``coherence_fn(question, answer)`` in [0, 1] from the ``local`` judge's likelihood coherence score
    (:class:`spillover.judge.CoherenceScorer`, 0..100 / 100); None for an answer it leaves unscored."""
    from spillover.judge._coherence import CoherenceScorer  # the judge stage, only when a gate is asked for

    scorer = CoherenceScorer.load(judge_file, device=device)

    def coherence(question: str, answer: str) -> float | None:
        score = scorer.score_many([question], [answer])[0].score
        return None if score is None else score / 100.0

    coherence.scorer = scorer  # type: ignore[attr-defined]  (its identity, for records and tests)
    return coherence
