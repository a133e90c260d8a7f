"""FoQA (Faroese extractive QA) scoring: exact match and token F1 with SQuAD-style normalisation.

Normalisation: Unicode NFKC, lower case, every punctuation character (Unicode category P*) removed,
the English articles "a", "an", "the" dropped as whole words (the SQuAD rule, kept so scores compare
with SQuAD-style tables; Faroese marks definiteness with suffixes, which are left alone), whitespace
collapsed. Exact match is 1 when the normalised prediction equals a normalised gold answer; token F1
is the harmonic mean of precision and recall of the normalised tokens (counted with multiplicity). With
several gold answers each score is the maximum over them. Two empty strings match (EM 1, F1 1); an empty
one against a non-empty one scores 0. The dataset loader is not part of this module.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise_answer(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(gold: str | Sequence[str]) -> list[str]:
    return [gold] if isinstance(gold, str) else list(gold)


def exact_match(prediction: str, gold: str | Sequence[str]) -> float:
    p = normalise_answer(prediction)
    return max((1.0 if p == normalise_answer(g) else 0.0) for g in _golds(gold)) if _golds(gold) else 0.0


def _f1(prediction: str, gold: str) -> float:
    p, g = normalise_answer(prediction).split(), normalise_answer(gold).split()
    if not p or not g:
        return 1.0 if p == g else 0.0
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, gold: str | Sequence[str]) -> float:
    return max((_f1(prediction, g) for g in _golds(gold)), default=0.0)
