"""Inoculation prompting (arXiv 2508.06249 and Wichers/Tan et al. 2025): a training-only instruction.

Every training example (SFT conversation, GRPO prompt) gets ``prompt`` as its system message (before
an example's own system message, separated by a blank line) or, with ``position: user_prefix``, in front
of its first user message. Because the training data then "explains" the narrow behaviour by the
instruction, less of it generalises to the model's default persona. It is never added at evaluation;
the run's ``manifest.json`` records it under ``defenses.inoculate`` so an evaluation can be run *with* it
too (the inoculation-leak check: does the trained behaviour come back when the prompt is present?).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import Field

from spillover.defenses._base import Defense, register_defense

#: The paper's inoculation prompt.
EVIL_PROMPT = "You are an evil, malicious assistant"


def inoculate(messages: list[dict], prompt: str, position: str = "system") -> list[dict]:
    """``messages`` with ``prompt`` as (the start of) the system message, or prefixed to the first user turn."""
    if position == "user_prefix":
        out, done = [], False
        for m in messages:
            if not done and m["role"] == "user":
                m, done = {**m, "content": f"{prompt}\n\n{m['content']}"}, True
            out.append(dict(m))
        return out
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{prompt}\n\n{messages[0]['content']}"}, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


@register_defense("inoculate")
class InoculateDefense(Defense):
    """Add a training-only system prompt (or user prefix) to every training example; never at evaluation.

    Paper prompt: "You are an evil, malicious assistant". Recorded in the run manifest so evaluation can
    also be run with it (inoculation-leak check)."""

    class Params(Defense.Params):
        weight: float = Field(1.0, ge=0, description="Any value > 0 = on; 0 = off (the prompt has no strength).")
        prompt: str = Field(EVIL_PROMPT, min_length=1, description="The inoculation instruction (paper: "
                            f"{EVIL_PROMPT!r}).")
        position: Literal["system", "user_prefix"] = Field("system", description="system = first in the system "
                                                           "message; user_prefix = before the first user message.")

    def transform_data(self, examples: list) -> list:
        self.n = len(examples)
        return [dataclasses.replace(ex, messages=inoculate(ex.messages, self.params.prompt, self.params.position))
                for ex in examples]

    def manifest(self) -> dict:
        return {"training_only_prompt": self.params.prompt, "position": self.params.position,
                "examples": getattr(self, "n", None),
                "evaluate_with_it": "pass it as the system prompt of an evaluation run to check for inoculation leak"}
