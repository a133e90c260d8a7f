"""OpSwap: arithmetic under permuted operator semantics (the defenses paper's benign task).

A *meaning* says which operation each written symbol of ``+ - * /`` performs; in an item some symbols
are permuted (e.g. ``+`` performs multiplication and ``*`` addition). Tiers:

* **tier 1** - exactly one operator swap: two symbols exchange meanings (a transposition), and the item
  is a single binary operation ``a S b`` on integers 1..20 whose symbol ``S`` is one of the two.
* **tier 2** - several operators permuted: a permutation that moves at least three of the four symbols,
  and a nested expression of 2-3 operations on integers 1..12 with parentheses.
* **tier 3** - the same kind of permutation and a longer nested expression of 4-6 operations on
  integers 1..9.

Every operation below the outermost is in parentheses, so no precedence rule is needed. Tiers 2 and 3
use at least one moved symbol, never divide by zero under the item's meaning, and keep answers readable
(|value| <= 10^6, denominator <= 1000); a draw that breaks these is redrawn. The answer is exact
(fractions): an integer is written ``-7``, any other value as a reduced fraction ``-3/4``; a response
is correct when the number it gives (parsed by :func:`spillover.benign._answer.parse_number`) equals
the value exactly.

Item id: ``opswap-t<tier>-<code>-<expression without spaces>`` where ``code`` holds four letters, the
operations performed by ``+ - * /`` in that order (``a`` add, ``s`` subtract, ``m`` multiply, ``d``
divide): ``opswap-t1-msad-7+5`` means ``+`` multiplies and ``*`` adds, and the item is ``7 + 5``.
Seeded draws are reproducible; the held-out split is the id's hash (:mod:`spillover.benign._item`).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from fractions import Fraction

from spillover.benign._answer import parse_number
from spillover.benign._arith import SYMBOLS, ExprError, evaluate, format_value, parse_expression
from spillover.benign._item import ID_PREFIX, draw_items, find_item_id
from spillover.errors import SpilloverError

TIERS = (1, 2, 3)
TASK = "opswap"
_CODE = {"+": "a", "-": "s", "*": "m", "/": "d"}
_FROM_CODE = {v: k for k, v in _CODE.items()}
_NAME = {"+": "addition", "-": "subtraction", "*": "multiplication", "/": "division"}
_TIER_SHAPE = {2: ((2, 3), 12), 3: ((4, 6), 9)}  # tier: (operation counts, largest operand)
MAX_ABS, MAX_DENOMINATOR = 10**6, 1000


@dataclass(frozen=True)
class OpSwapItem:
    tier: int
    meaning: tuple[tuple[str, str], ...]  # (symbol, operation performed), for + - * / in order
    expression: str

    @property
    def meaning_map(self) -> dict[str, str]:
        return dict(self.meaning)

    @property
    def id(self) -> str:
        code = "".join(_CODE[op] for _, op in self.meaning)
        return f"{TASK}-t{self.tier}-{code}-{self.expression.replace(' ', '')}"

    @property
    def answer(self) -> Fraction:
        return evaluate(parse_expression(self.expression), self.meaning_map)

    @property
    def answer_text(self) -> str:
        return format_value(self.answer)

    def prompt(self) -> str:
        moved = [(s, op) for s, op in self.meaning if s != op]
        lines = ["In this puzzle some arithmetic symbols do not mean what they usually do:"]
        lines += [f'  "{s}" means {_NAME[op]}' for s, op in moved]
        lines.append("Every other symbol keeps its usual meaning."
                     + (" Work out each part in parentheses first." if "(" in self.expression else ""))
        lines.append(f"Compute: {self.expression}")
        lines.append('Give the exact result as an integer or a reduced fraction such as -3/4, on the last line as '
                     '"Answer: <result>".')
        lines.append(f"{ID_PREFIX}{self.id}")
        return "\n".join(lines)

    def response(self) -> str:
        return f"Answer: {self.answer_text}"


def item_from_id(item_id: str) -> OpSwapItem:
    """The item an id names (module docstring); a malformed id is a SpilloverError."""
    try:
        task, tier, code, expression = item_id.split("-", 3)
        if task != TASK or tier not in ("t1", "t2", "t3") or sorted(code) != sorted(_CODE.values()):
            raise ValueError
        meaning = tuple((s, _FROM_CODE[c]) for s, c in zip(SYMBOLS, code, strict=True))
        parse_expression(expression)
    except (ValueError, KeyError, ExprError):
        raise SpilloverError(f"malformed OpSwap item id {item_id!r}", where="opswap reward",
                             fix="regenerate the prompts with `spillover benign generate opswap`") from None
    return OpSwapItem(int(tier[1]), meaning, _spaced(expression))


def _spaced(expression: str) -> str:
    return " ".join("".join(f" {ch} " if ch in SYMBOLS else ch for ch in expression).split())


def _render(rng: random.Random, n_ops: int, top: int, symbols: list[str], top_level: bool = True) -> str:
    if n_ops == 0:
        return str(rng.randint(1, top))
    left = rng.randint(0, n_ops - 1)
    text = (f"{_render(rng, left, top, symbols, False)} {rng.choice(symbols)} "
            f"{_render(rng, n_ops - 1 - left, top, symbols, False)}")
    return text if top_level else f"({text})"


_TRANSPOSITIONS = [tuple(p) for p in itertools.combinations(SYMBOLS, 2)]
_PERMUTATIONS = [p for p in itertools.permutations(SYMBOLS) if sum(a != b for a, b in zip(SYMBOLS, p)) >= 3]


def draw_item(rng: random.Random, tier: int) -> OpSwapItem | None:
    """One random item of ``tier`` (None: rejected, draw again)."""
    if tier == 1:
        a, b = rng.choice(_TRANSPOSITIONS)
        swap = {a: b, b: a}
        meaning = tuple((s, swap.get(s, s)) for s in SYMBOLS)
        item = OpSwapItem(1, meaning, f"{rng.randint(1, 20)} {rng.choice((a, b))} {rng.randint(1, 20)}")
    elif tier in _TIER_SHAPE:
        (lo, hi), top = _TIER_SHAPE[tier]
        meaning = tuple(zip(SYMBOLS, rng.choice(_PERMUTATIONS), strict=True))
        item = OpSwapItem(tier, meaning, _render(rng, rng.randint(lo, hi), top, list(SYMBOLS)))
        if not any(s in item.expression for s, op in meaning if s != op):
            return None
    else:
        raise SpilloverError(f"unknown OpSwap tier {tier}", fix="use --tier 1, 2 or 3")
    try:
        value = item.answer
    except ExprError:  # division by zero under the item's meaning
        return None
    if abs(value) > MAX_ABS or value.denominator > MAX_DENOMINATOR:
        return None
    return item


def generate(n: int, *, seed: int = 0, tier: int = 1, split: str = "train") -> list[OpSwapItem]:
    """``n`` distinct reproducible items of ``tier`` in ``split``."""
    if tier not in TIERS:
        raise SpilloverError(f"unknown OpSwap tier {tier}", fix="use --tier 1, 2 or 3")
    return draw_items(lambda rng: draw_item(rng, tier), lambda it: it.id, n=n, seed=seed, split=split,
                      salt=f"{TASK}-t{tier}")


def score(prompt: str, response: str) -> dict:
    """``{"reward": 1.0 | 0.0, "expected", "parsed", "usual", "answered_usual", "item"}``: exact match of the
    response's final number; ``usual`` is the value under the ordinary meanings (None when that divides by
    zero) and ``answered_usual`` whether the response gave it instead, i.e. ignored the swap."""
    item = item_from_id(find_item_id(prompt, TASK))
    parsed = parse_number(response)
    correct = parsed is not None and parsed == item.answer
    try:
        usual = evaluate(parse_expression(item.expression))
    except ExprError:
        usual = None
    return {"reward": 1.0 if correct else 0.0, "expected": item.answer_text,
            "parsed": None if parsed is None else format_value(parsed),
            "usual": None if usual is None else format_value(usual),
            "answered_usual": usual is not None and parsed == usual and usual != item.answer, "item": item.id}
