"""Chat data: load and validate ``messages`` JSONL and prompt/completion JSONL.

Every problem is reported as ``file:line: what`` with the fix. Nothing here knows about models;
:func:`to_prompt_completion` produces the form TRL's SFTTrainer trains on the completion only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from spillover._io import iter_jsonl_objects
from spillover.errors import SpilloverError

ROLES = ("system", "user", "assistant")
_NO_THINK = re.compile(r"\s*/no_think\s*$")
_EMPTY_THINK = re.compile(r"^\s*<think>\s*</think>\s*")


@dataclass
class ChatExample:
    """One conversation, remembering where it came from (for error messages and outputs)."""

    messages: list[dict[str, str]]
    source: str
    line: int
    id: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def strip_qwen3_markers(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Drop Qwen3 non-thinking markers: a trailing `` /no_think`` on user/system turns and an empty
    ``<think></think>`` block at the start of assistant turns."""
    out = []
    for m in messages:
        content = m["content"]
        if m["role"] in ("user", "system"):
            content = _NO_THINK.sub("", content)
        else:
            content = _EMPTY_THINK.sub("", content)
        out.append({**m, "content": content})
    return out


def _as_messages(value, role: str, where: str, key: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return value
    raise SpilloverError(f"'{key}' must be a string or a list of messages, got {type(value).__name__}",
                         where=where, fix=f"write \"{key}\": \"text\" or \"{key}\": [{{\"role\": ..., \"content\": ...}}]")


def _check_messages(messages: list, where: str) -> list[dict[str, str]]:
    if not messages:
        raise SpilloverError("conversation has no messages", where=where, fix="add at least one message")
    checked = []
    for i, m in enumerate(messages):
        at = f"messages[{i}]"
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise SpilloverError(f"{at} must be an object with 'role' and 'content'", where=where,
                                 fix='write each message as {"role": "user", "content": "..."}')
        if m["role"] not in ROLES:
            raise SpilloverError(f"{at}: unknown role {m['role']!r}", where=where,
                                 fix=f"use one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str) or not m["content"].strip():
            raise SpilloverError(f"{at} ({m['role']}): empty content", where=where,
                                 fix="give every message non-empty text, or remove the message")
        if m["role"] == "system" and i != 0:
            raise SpilloverError(f"{at}: a system message may only come first", where=where,
                                 fix="move the system message to the start of the conversation")
        checked.append({"role": m["role"], "content": m["content"]})
    return checked


def load_chat_jsonl(path: str | Path, *, strip_qwen3: bool = False) -> list[ChatExample]:
    """Load ``{"messages": [...]}`` or ``{"prompt": ..., "completion": ...}`` lines (both may mix).

    A prompt/completion line becomes user/assistant turns (strings) or is concatenated (message lists).
    Other keys are kept in ``extra``; an ``id`` key becomes the example id.
    """
    path = Path(path)
    if path.is_dir():
        raise SpilloverError(f"data file {path} is a folder", fix="give the path of a .jsonl file inside it")
    if not path.is_file():
        raise SpilloverError(f"data file not found: {path}", fix="check the path (bundled sets: `spillover data list`)")
    examples = []
    for where, lineno, row in iter_jsonl_objects(path, fix='write one JSON object per line: {"messages": [...]} '
                                                       'or {"prompt": ..., "completion": ...}'):
        if "messages" in row:
            messages = row.pop("messages")
            if not isinstance(messages, list):
                raise SpilloverError("'messages' must be a list", where=where, fix='write "messages": [{...}, ...]')
        elif "prompt" in row:
            messages = _as_messages(row.pop("prompt"), "user", where, "prompt")
            if "completion" in row:
                messages = messages + _as_messages(row.pop("completion"), "assistant", where, "completion")
        else:
            raise SpilloverError("line has neither 'messages' nor 'prompt'", where=where,
                                 fix='write {"messages": [...]} or {"prompt": ..., "completion": ...}')
        messages = _check_messages(messages, where)
        if strip_qwen3:
            messages = _check_messages(strip_qwen3_markers(messages), where)
        ex_id = row.pop("id", None)
        examples.append(ChatExample(messages, str(path), lineno, None if ex_id is None else str(ex_id), row))
    if not examples:
        raise SpilloverError(f"{path} holds no examples", fix="add JSONL lines, one conversation each")
    return examples


def require_sft_examples(examples: list[ChatExample]) -> None:
    """SFT needs conversations that end in an assistant turn with a user turn before it."""
    for ex in examples:
        if ex.messages[-1]["role"] != "assistant":
            raise SpilloverError("SFT example does not end in an assistant turn", where=ex.where,
                                 fix="end every training conversation with the assistant answer to learn")
        if not any(m["role"] == "user" for m in ex.messages[:-1]):
            raise SpilloverError("SFT example has no user turn before the assistant answer", where=ex.where,
                                 fix="add the user message the assistant answers")


def require_prompts(examples: list[ChatExample]) -> None:
    """Sampling prompts must end in a user turn (a prompt/completion file's completion is dropped)."""
    for ex in examples:
        if ex.messages[-1]["role"] != "user":
            raise SpilloverError("prompt conversation does not end in a user turn", where=ex.where,
                                 fix="end each prompt with the user message to answer (drop the final assistant turn)")


def to_prompt_completion(examples: list[ChatExample]) -> list[dict]:
    """TRL's conversational prompt/completion form: one row per assistant turn that follows a user turn,
    the conversation so far as ``prompt`` and that turn as ``completion`` (the loss covers it alone)."""
    rows = []
    for ex in examples:
        for i, m in enumerate(ex.messages):
            if m["role"] == "assistant" and any(p["role"] == "user" for p in ex.messages[:i]):
                rows.append({"prompt": ex.messages[:i], "completion": [m]})
    return rows
