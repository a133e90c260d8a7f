"""Rewards of the benign verifiable tasks (:mod:`spillover.benign`): 1 for a correct answer, else 0.

Each reads the item from the ``Item id:`` line of the prompt (GRPO keeps only the prompt column), so the
prompts must be the ones ``spillover benign generate TASK --format prompts`` wrote; a prompt without that
line is an error, never a silent 0. The answer is the completion with its ``<think>`` reasoning removed;
an empty or unparsable answer scores 0.
"""

from __future__ import annotations

from typing import Any

from spillover.benign import choice, countdown, opswap
from spillover.rewards._base import Reward, register_reward
from spillover.rewards._text import completion_text, prompt_text, split_reasoning


class _TaskReward(Reward):
    task: Any = None

    def score_details(self, prompt: Any, completion: Any) -> dict:
        _, answer = split_reasoning(completion_text(completion))
        return self.task.score(prompt_text(prompt), answer)


@register_reward("opswap-exact", "OpSwap: 1 when the final number equals the item's value under its permuted "
                 "operators (exact fractions), else 0.")
class OpSwapExact(_TaskReward):
    task = opswap


@register_reward("countdown", "Countdown: 1 when the answer expression uses only the given numbers, each at most "
                 "once, and equals the target (safe parser, no eval), else 0.")
class Countdown(_TaskReward):
    task = countdown


@register_reward("multiple-choice", "Multiple choice: 1 when the chosen letter is the item's answer, else 0.")
class MultipleChoice(_TaskReward):
    task = choice
