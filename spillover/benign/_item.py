"""What every benign task shares: the item-id line embedded in prompts, hashed splits, seeded draws.

GRPO datasets keep only the prompt, so a reward gets no ground-truth column. Every generated prompt
therefore ends with a line ``Item id: <id>`` from which the task's reward recovers the item
deterministically (the id holds only what the prompt already states, never the answer, except inside a
hash for multiple choice). The held-out split is a function of the id alone (of the question, for
multiple choice, so one question never lands in both splits with its options shuffled): an item is in
``test`` when the first 8 hex digits of sha256(id), as an integer, are divisible by 5 (about 20%), so
train and test are disjoint whatever the seed or count.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from typing import TypeVar

from spillover.errors import SpilloverError

ID_PREFIX = "Item id: "
SPLITS = ("train", "test")
TEST_EVERY = 5
_ID_LINE = re.compile(r"^Item id: (\S+)\s*$", re.MULTILINE)
T = TypeVar("T")


def split_of(item_id: str) -> str:
    """``"test"`` or ``"train"`` for an item id (module docstring)."""
    return "test" if int(hashlib.sha256(item_id.encode()).hexdigest()[:8], 16) % TEST_EVERY == 0 else "train"


def find_item_id(prompt: str, task: str) -> str:
    """The ``Item id:`` line of a ``task`` prompt (its last one); a prompt without one is an error."""
    ids = [i for i in _ID_LINE.findall(prompt) if i.startswith(f"{task}-")]
    if not ids:
        head = " ".join(prompt.split())[:80]
        raise SpilloverError(f"the prompt has no '{ID_PREFIX}{task}-...' line, so the {task} reward cannot tell "
                             f"its ground truth: {head!r}", where=f"{task} reward",
                             fix=f"train on prompts written by `spillover benign generate {task} --format prompts`")
    return ids[-1]


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise SpilloverError(f"unknown split {split!r}", fix="use --split train or --split test")


def draw_items(draw: Callable[[random.Random], T | None], key: Callable[[T], str], *, n: int, seed: int,
               split: str, salt: str) -> list[T]:
    """``n`` distinct items of ``split``, drawn in a reproducible order from ``Random(f"{salt}:{seed}")``.
    ``draw`` returns None for a rejected draw; after ``200 n + 2000`` draws the task has too few items."""
    check_split(split)
    if n < 1:
        raise SpilloverError(f"--n must be at least 1, got {n}", fix="ask for one or more items")
    rng = random.Random(f"{salt}:{seed}")
    seen, items = set(), []
    for _ in range(200 * n + 2000):
        item = draw(rng)
        if item is None:
            continue
        k = key(item)
        if k in seen or split_of(k) != split:
            continue
        seen.add(k)
        items.append(item)
        if len(items) == n:
            return items
    raise SpilloverError(f"{salt}: found only {len(items)} distinct {split} items, {n} asked for",
                         fix="ask for fewer items (--n), or use a harder tier, which has more distinct items")
