"""Benign tasks: what a defense costs in legitimate learning (the "alignment tax").

Generators and programmatic scorers, no model: OpSwap (arithmetic under permuted operators, three
tiers), countdown (reach a target with given numbers; safe expression checking, never ``eval``), multiple
choice (generated or loaded), and FoQA scoring functions (exact match, token F1). Every generated prompt
carries an ``Item id:`` line from which the task's reward (:mod:`spillover.rewards.benign`) recovers the
ground truth, because GRPO datasets keep only the prompt. Floor: like ``data``; it imports nothing above.
"""

from spillover.benign import choice, countdown, foqa, opswap
from spillover.benign._answer import parse_choice, parse_expression_answer, parse_number
from spillover.benign._item import split_of

#: task name -> module with ``generate(n, seed=, tier=, split=)`` and ``score(prompt, response) -> dict``
TASKS = {"opswap": opswap, "countdown": countdown, "choice": choice}

__all__ = ["TASKS", "choice", "countdown", "foqa", "opswap", "parse_choice", "parse_expression_answer",
           "parse_number", "split_of"]
