"""Text helpers every reward shares: the completion's text, reasoning/answer split, sentences, words.

Contracts (tests pin each one):

* A completion is a string or a conversational list of ``{"role", "content"}`` messages; its text is
  the content of the last ``assistant`` message (content given as a list of parts keeps the ``text``
  parts, joined with newlines). A message list with no assistant message is a caller bug and raises.
* :func:`split_reasoning`: the reasoning is the text inside ``<think>...</think>`` (several blocks are
  joined with a blank line), the answer is everything else. No tags: no reasoning, the whole text is the
  answer. A ``</think>`` without an opening tag (chat templates that put ``<think>`` in the prompt) makes
  everything before it reasoning; a ``<think>`` that is never closed (generation cut off while thinking)
  makes everything after it reasoning. Both parts are stripped.
* :func:`split_sentences`: collapse every run of whitespace (newlines included) to one space, then
  split at each space that follows ``.``, ``?`` or ``!``. Text without end punctuation is one sentence;
  empty text has none. Abbreviations ("Dr. Smith") split too: the rule is simple on purpose.
"""

from __future__ import annotations

import re
from typing import Any

from spillover.errors import SpilloverError

_WHITESPACE = re.compile(r"\s+")
_SENTENCE_BREAK = re.compile(r"(?<=[.?!]) ")
_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal parts: keep the text ones
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    if content is None:
        return ""
    raise SpilloverError(f"message content must be a string or a list of parts, got {type(content).__name__}",
                         where="reward input", fix="pass completions as strings or chat messages")


def completion_text(completion: Any) -> str:
    """The text of one completion: a string as is, or the last assistant message's content."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        for message in reversed(completion):
            if isinstance(message, dict) and message.get("role") == "assistant":
                return _content_text(message.get("content"))
        raise SpilloverError("conversational completion has no assistant message", where="reward input",
                             fix="pass completions as strings or lists ending in {'role': 'assistant', ...}")
    raise SpilloverError(f"a completion must be a string or a list of messages, got {type(completion).__name__}",
                         where="reward input", fix="pass completions as TRL does: strings or chat messages")


def prompt_text(prompt: Any) -> str:
    """The question a completion answers: a string prompt as is, or the last user message's content."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        for message in reversed(prompt):
            if isinstance(message, dict) and message.get("role") == "user":
                return _content_text(message.get("content"))
        return ""
    if prompt is None:
        return ""
    raise SpilloverError(f"a prompt must be a string or a list of messages, got {type(prompt).__name__}",
                         where="reward input", fix="pass prompts as TRL does: strings or chat messages")


def split_reasoning(text: str) -> tuple[str, str]:
    """``(reasoning, answer)`` of a completion text; see the module docstring for the tag rules."""
    opened, closed = "<think>" in text, "</think>" in text
    if not opened and not closed:
        return "", text.strip()
    if closed and (not opened or text.index("</think>") < text.index("<think>")):
        head, _, text = text.partition("</think>")  # the opening tag was in the prompt
        reasoning = [head]
    else:
        reasoning = []
    reasoning += _THINK_BLOCK.findall(text)
    answer = _THINK_BLOCK.sub("\n", text)
    if "<think>" in answer:  # never closed: generation stopped while thinking
        answer, _, tail = answer.partition("<think>")
        reasoning.append(tail)
    reasoning_text = "\n\n".join(r.strip() for r in reasoning if r.strip())
    return reasoning_text, answer.strip()


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` by the rule in the module docstring (whitespace already collapsed)."""
    flat = _WHITESPACE.sub(" ", text).strip()
    return [s for s in _SENTENCE_BREAK.split(flat) if s] if flat else []


def count_words(text: str) -> int:
    """Whitespace-separated tokens: the unit of the graders' minimum-length gates."""
    return len(text.split())
