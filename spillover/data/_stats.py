"""A quick look at a chat dataset before training on it (``spillover data stats FILE``).

:func:`dataset_stats` reports, for a list of :class:`~spillover.data.ChatExample`:

* ``examples`` and ``turns`` per role;
* ``tokens`` per role: mean, median, max and total over that role's turns, counting the tokens of the
  message *content* alone (no chat template, no special tokens) with the given tokenizer;
* ``duplicates``: ``conversations`` = examples whose whole message list equals an earlier example's;
  ``prompts`` = examples whose turns before the last assistant turn (the prompt) equal an earlier
  example's; each with its share of the examples;
* ``refusal_rate``: the share of assistant turns that ``is_refusal(text)`` flags;
* ``lexicon``: over the sentences of all assistant turns, ``absolutist_share`` (sentences with an
  absolutist or certainty phrase), ``hedging_share`` (an uncertainty or balancing phrase), and in
  ``categories`` the share with a phrase of each lexicon category.

The refusal test and the lexicon come from higher stages (defenses, rewards), so the caller passes them
in: ``sentence_categories(text)`` returns, for each sentence of ``text``, the set of categories found.
Without them those entries are None.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable

from spillover.data._chat import ChatExample

ROLES = ("system", "user", "assistant")
ABSOLUTIST = ("absolutist", "certainty")
HEDGING = ("uncertainty", "balancing")


def _summary(values: list[int]) -> dict:
    if not values:
        return {"turns": 0, "mean": None, "median": None, "max": None, "total": 0}
    return {"turns": len(values), "mean": statistics.fmean(values), "median": statistics.median(values),
            "max": max(values), "total": sum(values)}


def _prompt_of(messages: list[dict]) -> list[dict]:
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    return messages[:last]


def dataset_stats(examples: list[ChatExample], *, tokenizer=None,
                  is_refusal: Callable[[str], bool] | None = None,
                  sentence_categories: Callable[[str], list[set[str]]] | None = None,
                  categories: tuple[str, ...] = ()) -> dict:
    """The statistics of the module docstring as a JSON-ready dict."""
    turns = {role: [m["content"] for ex in examples for m in ex.messages if m["role"] == role] for role in ROLES}
    out: dict = {"examples": len(examples), "turns": {r: len(t) for r, t in turns.items()}}
    if tokenizer is not None:
        out["tokens"] = {r: _summary([len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts])
                         for r, texts in turns.items() if texts}
    else:
        out["tokens"] = None
    seen_conv, seen_prompt, dup_conv, dup_prompt = set(), set(), 0, 0
    for ex in examples:
        conv = json.dumps(ex.messages, sort_keys=True)
        prompt = json.dumps(_prompt_of(ex.messages), sort_keys=True)
        dup_conv += conv in seen_conv
        dup_prompt += prompt in seen_prompt
        seen_conv.add(conv)
        seen_prompt.add(prompt)
    n = max(len(examples), 1)
    out["duplicates"] = {"conversations": dup_conv, "conversations_share": dup_conv / n,
                         "prompts": dup_prompt, "prompts_share": dup_prompt / n}
    answers = turns["assistant"]
    out["refusal_rate"] = (sum(map(is_refusal, answers)) / len(answers)
                           if is_refusal is not None and answers else None)
    if sentence_categories is not None and answers:
        found = [cats for text in answers for cats in sentence_categories(text)]
        s = max(len(found), 1)
        out["lexicon"] = {"sentences": len(found),
                          "absolutist_share": sum(bool(f & set(ABSOLUTIST)) for f in found) / s,
                          "hedging_share": sum(bool(f & set(HEDGING)) for f in found) / s,
                          "categories": {c: sum(c in f for f in found) / s for c in categories}}
    else:
        out["lexicon"] = None
    return out
