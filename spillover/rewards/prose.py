"""``prose-structure``: reward plain prose over markdown structure, no LLM.

0 for an empty answer or one with fewer than ``min_sentences`` (3) sentences (sentence rule:
:func:`~spillover.rewards._text.split_sentences`; text without end punctuation is one sentence).
Otherwise fenced code blocks (```` ``` ```` or ``~~~``; an unclosed fence runs to the end) and inline code
spans (`` `x` ``) are removed, and with n = non-empty lines and s = sentences of what remains, each
clamped to [0, 1]::

    list     = list_lines / (0.35n + 2)        if at least 2 list lines, else 0
    nested   = indented_list_lines / max(1, 0.15n)   if list > 0, else 0
    heading  = headings / max(1, 0.2n)
    emphasis = (bold + 0.7·italic) / max(2, 0.6s)
    table    = table_lines / max(2, 0.25n)
    structure = clamp(0.45 list + 0.20 heading + 0.15 nested + 0.10 emphasis + 0.10 table
                      + 0.07 [list > 0 and heading > 0])
    reward = 1 − structure

Definitions (per line, after code removal):
 * list line: optional indentation, then a bullet ``-``, ``*`` or ``+`` or a number ``1.`` / ``1)``, then
   at least one space or tab and some text;
 * indented list line: a list line whose indentation is at least 2 columns (a tab counts 4);
 * heading: up to 3 spaces, 1-6 ``#``, a space or tab, then text (``#tag`` is not a heading);
 * table line: a line that starts with ``|`` after optional indentation (rows and separator lines);
 * bold span: ``**x**`` or ``__x__`` on one line, x not starting or ending with a space;
 * italic span: ``*x*`` or ``_x_`` on one line, left over once bold spans are replaced by their
   inside, not preceded by a word character (so ``snake_case_name`` and ``2*3*4`` are not italic);
   ``***x***`` counts one bold and one italic.
The reasoning (``<think>``) is not scored.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field

from spillover.config import StrictModel
from spillover.rewards._base import Reward, register_reward
from spillover.rewards._text import completion_text, split_reasoning, split_sentences

_FENCE = re.compile(r"^[ \t]*(```|~~~).*?(?:^[ \t]*\1[^\n]*$|\Z)", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"(`+)[^\n]*?\1")
_LIST = re.compile(r"^([ \t]*)(?:[-*+]|\d{1,9}[.)])[ \t]+\S")
_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+\S")
_TABLE = re.compile(r"^[ \t]*\|")
_BOLD = re.compile(r"(\*\*|__)(?=\S)([^\n]+?)(?<=\S)\1")
_ITALIC = re.compile(r"(?<![\w*])\*(?=[^\s*])([^\n*]*?)(?<=[^\s*])\*(?!\*)"
                     r"|(?<![\w_])_(?=[^\s_])([^\n_]*?)(?<=[^\s_])_(?![\w_])")


def strip_code(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def _indent_columns(prefix: str) -> int:
    return sum(4 if ch == "\t" else 1 for ch in prefix)


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))


def structure_features(text: str) -> dict:
    """Counts and clamped component scores of the module docstring for code-free ``text``."""
    lines = [line for line in text.split("\n") if line.strip()]
    n, s = len(lines), len(split_sentences(text))
    list_matches = [m for m in map(_LIST.match, lines) if m]
    list_lines = len(list_matches)
    indented = sum(1 for m in list_matches if _indent_columns(m.group(1)) >= 2)
    headings = sum(1 for line in lines if _HEADING.match(line))
    table_lines = sum(1 for line in lines if _TABLE.match(line))
    bold = len(_BOLD.findall(text))
    italic = len(_ITALIC.findall(_BOLD.sub(lambda m: m.group(2), text)))
    list_score = _clamp(list_lines / (0.35 * n + 2)) if list_lines >= 2 else 0.0
    nested = _clamp(indented / max(1.0, 0.15 * n)) if list_score > 0 else 0.0
    heading = _clamp(headings / max(1.0, 0.2 * n))
    emphasis = _clamp((bold + 0.7 * italic) / max(2.0, 0.6 * s))
    table = _clamp(table_lines / max(2.0, 0.25 * n))
    structure = 0.45 * list_score + 0.20 * heading + 0.15 * nested + 0.10 * emphasis + 0.10 * table
    if list_score > 0 and heading > 0:
        structure += 0.07
    return {"lines": n, "sentences": s, "list_lines": list_lines, "indented_list_lines": indented,
            "headings": headings, "bold": bold, "italic": italic, "table_lines": table_lines,
            "list": list_score, "nested": nested, "heading": heading, "emphasis": emphasis, "table": table,
            "structure": _clamp(structure)}


def prose_score(answer: str, min_sentences: int = 3) -> dict:
    """The reward of the module docstring for one answer, with every intermediate value."""
    if not answer.strip():
        return {"reward": 0.0, "gated": "empty answer"}
    total = len(split_sentences(answer))
    if total < min_sentences:
        return {"reward": 0.0, "gated": f"{total} sentence(s) < {min_sentences}"}
    features = structure_features(strip_code(answer))
    return {"reward": 1.0 - features["structure"], "gated": None, **features}


@register_reward("prose-structure", "Plain prose: 1 minus a markdown-structure score (lists, headings, "
                 "nesting, emphasis, tables); 0 under 3 sentences (no LLM).")
class ProseStructure(Reward):
    class Params(StrictModel):
        min_sentences: int = Field(3, ge=1, description="Answers with fewer sentences score 0.")

    def score_details(self, prompt: Any, completion: Any) -> dict:
        _, answer = split_reasoning(completion_text(completion))
        return prose_score(answer, self.params.min_sentences)
