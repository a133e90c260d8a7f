"""Countdown: reach a target from given numbers with ``+ - * /`` (a verifiable task for GRPO arms).

Rule (stated in every prompt): the answer is one arithmetic expression using ``+ - * /`` and
parentheses in which each given number is used at most once (as in the Countdown game, not every number
must be used; a number given twice may be used twice); its exact value must equal the target. Division
is exact, so a fraction along the way is fine as long as the final value is the target. Nothing else
is allowed: no other numbers, no unary minus, no ``**``, no names or calls. The expression is checked by
:mod:`spillover.benign._arith` (an :mod:`ast` whitelist, bounded size; never ``eval``).

Tiers set the size: tier 1 gives 3 numbers, tier 2 gives 4, tier 3 gives 5, each drawn from 1..10 or
(one time in four) from 25, 50, 75, 100. Items are always solvable: the target is the value of a random
expression over all the numbers or all but one, kept when it is a whole number in
1..1000 (that expression is the reference solution). The response's expression is read by
:func:`spillover.benign._answer.parse_expression_answer` (``<answer>...</answer>``, ``\\boxed{}``, an
"Answer:" line, else the last line; a trailing ``= target`` is dropped).

Item id: ``countdown-<numbers joined by _>-<target>``, e.g. ``countdown-3_7_25_50-120``.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass

from spillover.benign._answer import parse_expression_answer
from spillover.benign._arith import SYMBOLS, ExprError, evaluate, literals, parse_expression
from spillover.benign._item import ID_PREFIX, draw_items, find_item_id
from spillover.errors import SpilloverError

TASK = "countdown"
TIERS = (1, 2, 3)
BIG = (25, 50, 75, 100)
MAX_TARGET = 1000


@dataclass(frozen=True)
class CountdownItem:
    numbers: tuple[int, ...]
    target: int
    solution: str | None = None  # a reference expression (generated items); not part of the id

    @property
    def id(self) -> str:
        return f"{TASK}-{'_'.join(map(str, self.numbers))}-{self.target}"

    def prompt(self) -> str:
        return "\n".join([
            f"Numbers: {', '.join(map(str, self.numbers))}",
            f"Target: {self.target}",
            "Write an arithmetic expression that equals the target, using + - * / and parentheses. Use each "
            "given number at most once (you need not use them all) and no other numbers. Division is exact.",
            'Put the expression alone on the last line as "Answer: <expression>".',
            f"{ID_PREFIX}{self.id}",
        ])

    def response(self) -> str:
        if self.solution is None:
            raise SpilloverError(f"{self.id} has no reference solution", fix="generate items to get SFT answers")
        return f"Answer: {self.solution}"


def item_from_id(item_id: str) -> CountdownItem:
    try:
        task, numbers, target = item_id.split("-")
        if task != TASK:
            raise ValueError
        item = CountdownItem(tuple(int(x) for x in numbers.split("_")), int(target))
    except ValueError:
        raise SpilloverError(f"malformed countdown item id {item_id!r}", where="countdown reward",
                             fix="regenerate the prompts with `spillover benign generate countdown`") from None
    return item


def verify(numbers: tuple[int, ...] | list[int], target: int, expression: str | None) -> tuple[bool, str]:
    """``(correct, why)``: ``why`` is ``"correct"`` or the reason the expression fails."""
    if expression is None or not expression.strip():
        return False, "no expression"
    try:
        tree = parse_expression(expression)
        used = Counter(literals(tree))
        extra = used - Counter(numbers)
        if extra:
            return False, f"uses numbers not given (or too often): {sorted(extra.elements())}"
        value = evaluate(tree)
    except ExprError as e:
        return False, str(e)
    if value != target:
        return False, f"value {value} is not the target {target}"
    return True, "correct"


def _draw(rng: random.Random, tier: int) -> CountdownItem | None:
    size = {1: 3, 2: 4, 3: 5}[tier]
    numbers = tuple(sorted(rng.choice(BIG) if rng.random() < 0.25 else rng.randint(1, 10) for _ in range(size)))
    chosen = rng.sample(numbers, rng.randint(size - 1, size))
    text = str(chosen[0])
    for x in chosen[1:]:
        text = f"({text}) {rng.choice(SYMBOLS)} {x}" if rng.random() < 0.5 else f"{x} {rng.choice(SYMBOLS)} ({text})"
    try:
        value = evaluate(parse_expression(text))
    except ExprError:
        return None
    if value.denominator != 1 or not 1 <= value <= MAX_TARGET or value in numbers:
        return None
    return CountdownItem(numbers, int(value), _tidy(text))


def _tidy(text: str) -> str:
    """Drop the parentheses around single numbers: ``((3) + 4)`` -> ``(3 + 4)``."""
    previous = None
    while previous != text:
        previous, text = text, re.sub(r"\((\d+)\)", r"\1", text)
    return text


def generate(n: int, *, seed: int = 0, tier: int = 1, split: str = "train") -> list[CountdownItem]:
    if tier not in TIERS:
        raise SpilloverError(f"unknown countdown tier {tier}", fix="use --tier 1, 2 or 3")
    return draw_items(lambda rng: _draw(rng, tier), lambda it: it.id, n=n, seed=seed, split=split,
                      salt=f"{TASK}-t{tier}")


def score(prompt: str, response: str) -> dict:
    """``{"reward": 1.0 | 0.0, "why", "expression"}`` for one response to a countdown prompt."""
    item = item_from_id(find_item_id(prompt, TASK))
    expression = parse_expression_answer(response)
    ok, why = verify(item.numbers, item.target, expression)
    return {"reward": 1.0 if ok else 0.0, "why": why, "expression": expression, "item": item.id}


__all__ = ["CountdownItem", "generate", "item_from_id", "score", "verify"]
