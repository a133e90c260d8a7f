"""``prose-structure`` and ``prose-structure-strict``: reward plain prose over markdown structure, no LLM.

Both score the answer (the ``<think>`` reasoning is not scored) with the RL paper's formula and differ
only in how they count markdown. 0 for an empty answer or one with fewer than ``min_sentences`` (3)
sentences (sentence rule: :func:`~spillover.rewards._text.split_sentences`; text without end punctuation
is one sentence). Otherwise, with n = non-empty lines and s = sentences (defined per counting below),
each component clamped to [0, 1]::

    list     = list_lines / (0.35n + 2)        if at least 2 list lines, else 0
    nested   = indented_list_lines / max(1, 0.15n)   if list > 0, else 0
    heading  = headings / max(1, 0.2n)
    emphasis = (bold + 0.7·italic) / max(2, 0.6s)
    table    = table_lines / max(2, 0.25n)
    structure = clamp(0.45 list + 0.20 heading + 0.15 nested + 0.10 emphasis + 0.10 table
                      + 0.07 [list > 0 and heading > 0])
    reward = 1 − structure

``prose-structure`` counts as the paper's code does (its regular expressions, reproduced so a user
gets the paper's numbers; each rule is a multi-line regex over the whole code-free text):
 * code: closed ```` ``` ```` blocks, then `` `...` `` spans (which may cross lines), are removed;
 * n: non-empty lines of what remains (``str.splitlines``; at least 1); s: sentences of the whole answer,
   code included;
 * list line: line start, any whitespace, ``-`` ``*`` ``+`` or 1-3 digits and ``.`` / ``)``, whitespace,
   a non-space. "Whitespace" includes line breaks, so a bare ``-`` followed by a line of text counts;
 * indented list line: the same after a tab or 2+ spaces at line start;
 * heading: line start, up to 3 whitespace characters, 1-6 ``#``, whitespace, a non-space;
 * table line: a line that starts and ends with ``|``, plus every separator line (``|---|---|``), so a
   separator counts twice;
 * bold span: ``**x**`` or ``__x__`` on one line, x not starting or ending with a space;
 * italic span: ``*x*`` or ``_x_`` on one line, counted on the text *with* bold markers still in it and
   with no word-boundary rule: ``**x**`` and ``__x__`` add two italic spans each (the empty ones between
   the doubled markers), ``snake_case_name`` and ``2*3*4`` one each.

``prose-structure-strict`` counts markdown as a renderer would:
 * code: fenced blocks with ```` ``` ```` or ``~~~`` (an unclosed fence runs to the end) and inline spans
   of any backtick run, on one line, are removed; n and s are both counted on the code-free text;
 * list line: optional indentation, then a bullet ``-``, ``*`` or ``+`` or a number ``1.`` / ``1)``, then
   at least one space or tab and some text, all on the line; indented: at least 2 columns (a tab is 4);
 * heading: up to 3 spaces, 1-6 ``#``, a space or tab, then text (``#tag`` is not a heading);
 * table line: a line that starts with ``|`` after optional indentation (rows and separator lines, once);
 * bold span: ``**x**`` or ``__x__`` on one line, x not starting or ending with a space;
 * italic span: ``*x*`` or ``_x_`` on one line, left over once bold spans are replaced by their inside,
   not preceded by a word character (so ``snake_case_name`` and ``2*3*4`` are not italic);
   ``***x***`` counts one bold and one italic.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import Field

from spillover.config import StrictModel
from spillover.rewards._base import Reward, register_reward
from spillover.rewards._text import completion_text, split_reasoning, split_sentences

# -- strict counting ---------------------------------------------------------------------------------
_FENCE = re.compile(r"^[ \t]*(```|~~~).*?(?:^[ \t]*\1[^\n]*$|\Z)", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"(`+)[^\n]*?\1")
_LIST = re.compile(r"^([ \t]*)(?:[-*+]|\d{1,9}[.)])[ \t]+\S")
_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+\S")
_TABLE = re.compile(r"^[ \t]*\|")
_BOLD = re.compile(r"(\*\*|__)(?=\S)([^\n]+?)(?<=\S)\1")
_ITALIC = re.compile(r"(?<![\w*])\*(?=[^\s*])([^\n*]*?)(?<=[^\s*])\*(?!\*)"
                     r"|(?<![\w_])_(?=[^\s_])([^\n_]*?)(?<=[^\s_])_(?![\w_])")

# -- the paper's counting (its rules, see the module docstring) ----------------------------------------
_PAPER_FENCE = re.compile(r"```.*?```", re.DOTALL)
_PAPER_INLINE_CODE = re.compile(r"`[^`]*`")
_PAPER_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+\S+", re.MULTILINE)
_PAPER_BULLET = re.compile(r"^\s*[-*+]\s+\S+", re.MULTILINE)
_PAPER_NUMBERED = re.compile(r"^\s*\d{1,3}[.)]\s+\S+", re.MULTILINE)
_PAPER_INDENTED = re.compile(r"^(?:\t| {2,})\s*(?:[-*+]|\d{1,3}[.)])\s+\S+", re.MULTILINE)
_PAPER_TABLE_ROW = re.compile(r"^\s*\|.+\|\s*$", re.MULTILINE)
_PAPER_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(?:\|\s*:?-{3,}:?\s*)+\|?\s*$", re.MULTILINE)
_PAPER_BOLD = re.compile(r"(\*\*|__)(?=\S)(.*?)(?<=\S)\1")
_PAPER_ITALIC = re.compile(r"(?<!\*)\*(?=\S)(.*?)(?<=\S)\*(?!\*)|(?<!_)_(?=\S)(.*?)(?<=\S)_(?!_)")


def strip_code(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans (strict counting)."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def paper_strip_code(text: str) -> str:
    """``text`` without closed ```` ``` ```` blocks and `` `...` `` spans (the paper's counting)."""
    return _PAPER_INLINE_CODE.sub("", _PAPER_FENCE.sub("", text))


def _indent_columns(prefix: str) -> int:
    return sum(4 if ch == "\t" else 1 for ch in prefix)


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))


def _components(n: int, s: int, list_lines: int, indented: int, headings: int, bold: int, italic: int,
                 table_lines: int) -> dict:
    """The formula of the module docstring on the counts: every component and the structure score."""
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


def structure_features(text: str) -> dict:
    """Counts and clamped components of the strict counting for code-free ``text``."""
    lines = [line for line in text.split("\n") if line.strip()]
    list_matches = [m for m in map(_LIST.match, lines) if m]
    return _components(
        n=len(lines), s=len(split_sentences(text)), list_lines=len(list_matches),
        indented=sum(1 for m in list_matches if _indent_columns(m.group(1)) >= 2),
        headings=sum(1 for line in lines if _HEADING.match(line)), bold=len(_BOLD.findall(text)),
        italic=len(_ITALIC.findall(_BOLD.sub(lambda m: m.group(2), text))),
        table_lines=sum(1 for line in lines if _TABLE.match(line)))


def paper_structure_features(answer: str) -> dict:
    """Counts and clamped components of the paper's counting for a whole ``answer`` (code included)."""
    text = paper_strip_code(answer)
    return _components(
        n=len([line for line in text.splitlines() if line.strip()]) or 1, s=len(split_sentences(answer)),
        list_lines=len(_PAPER_BULLET.findall(text)) + len(_PAPER_NUMBERED.findall(text)),
        indented=len(_PAPER_INDENTED.findall(text)), headings=len(_PAPER_HEADING.findall(text)),
        bold=len(_PAPER_BOLD.findall(text)), italic=len(_PAPER_ITALIC.findall(text)),
        table_lines=len(_PAPER_TABLE_ROW.findall(text)) + len(_PAPER_TABLE_RULE.findall(text)))


COUNTINGS: dict[str, Callable[[str], dict]] = {
    "paper": paper_structure_features,
    "strict": lambda answer: structure_features(strip_code(answer)),
}


def prose_score(answer: str, min_sentences: int = 3, counting: str = "paper") -> dict:
    """The reward of the module docstring for one answer with ``counting`` ("paper" or "strict")."""
    features = COUNTINGS[counting]  # a KeyError names an unknown counting
    if not answer.strip():
        return {"reward": 0.0, "gated": "empty answer"}
    total = len(split_sentences(answer))
    if total < min_sentences:
        return {"reward": 0.0, "gated": f"{total} sentence(s) < {min_sentences}"}
    counted = features(answer)
    return {"reward": 1.0 - counted["structure"], "gated": None, **counted}


class _ProseReward(Reward):
    counting: ClassVar[str]

    class Params(StrictModel):
        min_sentences: int = Field(3, ge=1, description="Answers with fewer sentences score 0 (paper: 3).")

    def score_details(self, prompt: Any, completion: Any) -> dict:
        _, answer = split_reasoning(completion_text(completion))
        return prose_score(answer, self.params.min_sentences, self.counting)


@register_reward("prose-structure", "Plain prose, the RL paper's counting: 1 minus a markdown-structure score "
                 "(lists, headings, nesting, emphasis, tables); 0 under 3 sentences (no LLM).")
class ProseStructure(_ProseReward):
    counting = "paper"


@register_reward("prose-structure-strict", "Plain prose, markdown counted as rendered (bold not re-counted as "
                 "italics, no intra-word italics, table separators once); else as prose-structure (no LLM).")
class ProseStructureStrict(_ProseReward):
    counting = "strict"
