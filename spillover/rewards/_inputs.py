"""Completions to score with a reward outside training (``spillover rewards score``).

One JSON object per line, either ``{"prompt": ..., "completion": ...}`` (each a string or a list of chat
messages) or ``{"messages": [...]}`` whose last message is the assistant completion. Unlike training data,
a completion may be empty: GRPO samples empty completions and every reward defines their value (0), so
they are scored, not refused. Every other problem names ``file:line`` and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spillover._io import iter_jsonl_objects
from spillover.errors import SpilloverError

ROLES = ("system", "user", "assistant")
_FIX = 'write {"prompt": "...", "completion": "..."} or {"messages": [..., {"role": "assistant", "content": "..."}]}'


@dataclass(frozen=True)
class ScoringItem:
    """One prompt (string or messages) and the completion to score (string or messages, maybe empty)."""

    prompt: Any
    completion: Any
    where: str


def _check_messages(value: Any, key: str, where: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise SpilloverError(f"'{key}' must be a string or a non-empty list of messages", where=where, fix=_FIX)
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise SpilloverError(f"{key}[{i}] must be {{\"role\": system|user|assistant, \"content\": \"text\"}}",
                                 where=where, fix=_FIX)
    return value


def _as_turns(value: Any, key: str, where: str) -> Any:
    return value if isinstance(value, str) else _check_messages(value, key, where)


def load_scoring_items(path: str | Path) -> list[ScoringItem]:
    """The items of a completions file, in order (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise SpilloverError(f"completions file not found: {path}", fix="check the path")
    items = []
    for where, _, row in iter_jsonl_objects(path, fix=_FIX):
        if "messages" in row:
            messages = _check_messages(row["messages"], "messages", where)
            if messages[-1]["role"] != "assistant":
                raise SpilloverError("the last message must be the assistant completion to score", where=where,
                                     fix="end the conversation with the assistant turn (its content may be empty)")
            items.append(ScoringItem(messages[:-1], messages[-1:], where))
        elif "prompt" in row and "completion" in row:
            completion = _as_turns(row["completion"], "completion", where)
            if isinstance(completion, list) and not any(m["role"] == "assistant" for m in completion):
                raise SpilloverError("'completion' holds no assistant message", where=where, fix=_FIX)
            items.append(ScoringItem(_as_turns(row["prompt"], "prompt", where), completion, where))
        else:
            raise SpilloverError("line needs 'prompt' and 'completion', or 'messages'", where=where, fix=_FIX)
    if not items:
        raise SpilloverError(f"{path} holds no completions", fix=_FIX)
    return items
