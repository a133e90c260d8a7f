"""Multiple choice: ``{question, choices, answer_index}`` items, a letter parser and an exact scorer.

Items come from a JSONL file (one ``{"question": str, "choices": [str, ...], "answer_index": int}`` per
line, 2-26 choices; every problem names ``file:line``) or from the built-in generator of arithmetic
questions ("What is 7 x 8?" with three near-miss distractors): tier 1 multiplies two numbers 2..9,
tier 2 a two-digit by a one-digit number, tier 3 two two-digit numbers. Options are lettered A, B, ...

The prompt ends with ``Item id: choice-<n>-<check>`` where ``n`` is the number of options and
``check`` the first 12 hex digits of sha256 of the prompt text above that line, a NUL and the answer
index. The reward recomputes the hash for each index and so recovers the answer without the prompt
stating it. A response is correct when :func:`spillover.benign._answer.parse_choice` finds the right
letter; no letter found scores 0.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from spillover._io import iter_jsonl_objects
from spillover.benign._answer import parse_choice
from spillover.benign._item import ID_PREFIX, draw_items, find_item_id, split_of
from spillover.errors import SpilloverError

TASK = "choice"
TIERS = (1, 2, 3)
_FIX = 'write {"question": "...", "choices": ["...", "..."], "answer_index": 0} (0-based index into choices)'


def letter(i: int) -> str:
    return chr(ord("A") + i)


@dataclass(frozen=True)
class ChoiceItem:
    question: str
    choices: tuple[str, ...]
    answer_index: int

    def body(self) -> str:
        options = [f"{letter(i)}. {c}" for i, c in enumerate(self.choices)]
        return "\n".join([self.question, "", *options, "",
                          'Reply with the letter of the correct option on the last line as "Answer: <letter>".'])

    @property
    def id(self) -> str:
        return f"{TASK}-{len(self.choices)}-{_check(self.body(), self.answer_index)}"

    def prompt(self) -> str:
        return f"{self.body()}\n{ID_PREFIX}{self.id}"

    def response(self) -> str:
        return f"Answer: {letter(self.answer_index)}"


def _check(body: str, index: int) -> str:
    return hashlib.sha256(f"{body}\0{index}".encode()).hexdigest()[:12]


def answer_from_prompt(prompt: str) -> tuple[int, int]:
    """``(answer_index, n_choices)`` of a generated prompt (module docstring)."""
    item_id = find_item_id(prompt, TASK)
    body = prompt[:prompt.rfind(f"\n{ID_PREFIX}{item_id}")]
    try:
        _, n, check = item_id.split("-")
        n_choices = int(n)
    except ValueError:
        n_choices, check = 0, ""
    for index in range(n_choices):
        if _check(body, index) == check:
            return index, n_choices
    raise SpilloverError(f"the prompt does not match its item id {item_id!r} (was the prompt text edited?)",
                         where="multiple-choice reward",
                         fix="use the prompts exactly as `spillover benign generate choice` wrote them")


def load_items(path: str | Path) -> list[ChoiceItem]:
    """The items of a JSONL file (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise SpilloverError(f"multiple-choice file not found: {path}", fix="check the path")
    items = []
    for where, _, row in iter_jsonl_objects(path, fix=_FIX):
        unknown = sorted(set(row) - {"question", "choices", "answer_index", "id"})
        if unknown:
            raise SpilloverError(f"unknown key {unknown[0]!r}", where=where, fix=_FIX)
        question, choices, index = row.get("question"), row.get("choices"), row.get("answer_index")
        if not isinstance(question, str) or not question.strip():
            raise SpilloverError("'question' must be a non-empty string", where=where, fix=_FIX)
        if (not isinstance(choices, list) or not 2 <= len(choices) <= 26
                or not all(isinstance(c, str) and c.strip() for c in choices)):
            raise SpilloverError("'choices' must be a list of 2 to 26 non-empty strings", where=where, fix=_FIX)
        if type(index) is not int or not 0 <= index < len(choices):
            raise SpilloverError(f"'answer_index' must be an integer from 0 to {len(choices) - 1}, got {index!r}",
                                 where=where, fix=_FIX)
        items.append(ChoiceItem(question.strip(), tuple(c.strip() for c in choices), index))
    if not items:
        raise SpilloverError(f"{path} holds no items", fix=_FIX)
    return items


_RANGES = {1: ((2, 9), (2, 9)), 2: ((10, 99), (2, 9)), 3: ((10, 99), (10, 99))}


def _draw(rng: random.Random, tier: int) -> ChoiceItem:
    (a_lo, a_hi), (b_lo, b_hi) = _RANGES[tier]
    a, b = rng.randint(a_lo, a_hi), rng.randint(b_lo, b_hi)
    right = a * b
    wrong = set()
    while len(wrong) < 3:
        candidate = right + rng.choice((-1, 1)) * rng.choice((1, 2, a, b, 10))
        if candidate > 0 and candidate != right:
            wrong.add(candidate)
    options = [right, *sorted(wrong)]
    rng.shuffle(options)
    return ChoiceItem(f"What is {a} x {b}?", tuple(map(str, options)), options.index(right))


def generate(n: int, *, seed: int = 0, tier: int = 1, split: str = "train") -> list[ChoiceItem]:
    if tier not in TIERS:
        raise SpilloverError(f"unknown multiple-choice tier {tier}", fix="use --tier 1, 2 or 3")
    return draw_items(lambda rng: _draw(rng, tier), lambda it: it.question, n=n, seed=seed, split=split,
                      salt=f"{TASK}-t{tier}")


def select_split(items: list[ChoiceItem], split: str) -> list[ChoiceItem]:
    """The loaded items in ``split`` (by the hash of the question, as for generated items)."""
    return [it for it in items if split_of(it.question) == split]


def score(prompt: str, response: str) -> dict:
    """``{"reward": 1.0 | 0.0, "expected", "parsed"}`` (letters) for one response."""
    index, n_choices = answer_from_prompt(prompt)
    parsed = parse_choice(response, n_choices)
    return {"reward": 1.0 if parsed == index else 0.0, "expected": letter(index),
            "parsed": None if parsed is None else letter(parsed)}
