"""The model's final answer out of free text: a number, an expression, or a multiple-choice letter.

Rules, in order (each pinned by a test):

1. Reasoning is dropped: text up to the last ``</think>`` is ignored.
2. The *answer span* is the content of the last ``\\boxed{...}`` (braces balanced); else the rest of the
   line after the last "answer is", "answer:" or "answer =" (any case, "final answer" too); else, for
   numbers, the whole text.
3. Markup is removed from the span: ``**``, ``$``, ``\\(``/``\\)``, ``\\[``/``\\]``, ``\\left``/``\\right``;
   ``\\frac{a}{b}`` (``\\dfrac``, ``\\tfrac``) becomes ``a/b``, ``\\times``/``\\cdot`` ``*`` and ``\\div`` ``/``;
   typographic minus becomes ``-``.
4. Numbers: in a boxed or answer-line span the text after its last ``=`` is read (``x = 3/4``) and the
   *first* number there is the answer; in the whole-text fallback the *last* number is. A number is an
   optional sign, digits with optional thousands commas (``1,234``), an optional decimal part, and an
   optional ``/ denominator``: ``42``, ``-7``, ``42.0``, ``3/4``, ``-1.5``. Its value is exact
   (``0.75`` equals ``3/4``; ``0.333`` does not equal ``1/3``). A zero denominator is no answer.
"""

from __future__ import annotations

import re
from fractions import Fraction

_ANSWER_MARK = re.compile(r"(?:final\s+)?answer\s*(?:is\s*:?|:|=)", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])([-+]?\d{1,3}(?:,\d{3})+|[-+]?\d+)(\.\d+)?(?:\s*/\s*([-+]?\d+)(?![\d.]))?")
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*?)\s*\}\s*\{\s*([^{}]*?)\s*\}")
_MARKUP = re.compile(r"\*\*|\$|\\[()\[\]]|\\left|\\right|\\!|\\,|\\text\{[^{}]*\}")


def strip_reasoning(text: str) -> str:
    """``text`` after its last ``</think>`` (all of it when there is none)."""
    return text.rpartition("</think>")[2] if "</think>" in text else text


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` with balanced braces, or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


def answer_span(text: str) -> tuple[str, bool]:
    """``(span, marked)``: the boxed content or the answer line (marked=True), else the whole text."""
    text = strip_reasoning(text)
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed, True
    marks = list(_ANSWER_MARK.finditer(text))
    if marks:
        rest = text[marks[-1].end():].lstrip()
        return rest.split("\n", 1)[0] if rest else "", True
    return text, False


def clean_markup(span: str) -> str:
    span = span.replace("\u2212", "-").replace("\u2013", "-")
    span = re.sub(r"\\(?:times|cdot)(?![A-Za-z])", "*", re.sub(r"\\div(?![A-Za-z])", "/", span))
    span = _FRAC.sub(lambda m: f"{m.group(1)}/{m.group(2)}", span)
    return _MARKUP.sub(" ", span)


def _value(match: re.Match) -> Fraction | None:
    whole, decimals, denominator = match.group(1), match.group(2) or "", match.group(3)
    value = Fraction(whole.replace(",", "") + decimals)
    if denominator is not None:
        if int(denominator) == 0:
            return None
        value /= int(denominator)
    return value


def parse_number(text: str) -> Fraction | None:
    """The final numeric answer in a model's output (module docstring), exact, or None."""
    span, marked = answer_span(text)
    span = clean_markup(span)
    if marked and "=" in span:
        span = span.rpartition("=")[2]
    found = list(_NUMBER.finditer(span))
    if not found:
        return None
    return _value(found[0] if marked else found[-1])


def parse_expression_answer(text: str) -> str | None:
    """The expression a model gives as its answer: ``<answer>...</answer>`` (last), else the boxed or
    answer-line span, else the last non-empty line; markup removed and a trailing ``= value`` or final
    period dropped. None when nothing is left."""
    text = strip_reasoning(text)
    tagged = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    if tagged:
        span = tagged[-1]
    else:
        span, marked = answer_span(text)
        if not marked:
            lines = [line for line in span.splitlines() if line.strip()]
            span = lines[-1] if lines else ""
    span = clean_markup(span).strip()
    span = span.split("=", 1)[0] if "=" in span else span
    span = span.strip().rstrip(".").strip()
    return span or None


_LETTER_FORMS = (
    r"^\s*\(?({L})\)?\s*[.):]?\s*$",          # the whole span is a letter: "B", "(B)", "B."
    r"^\s*\(?({L})\)?\s*[.):]\s",             # "B) text", "(B). text"
    r"\(({L})\)",                             # "(B)" anywhere
    r"(?:option|choice|letter)\s+({L})\b",    # "option B"
)


def parse_choice(text: str, n_choices: int) -> int | None:
    """The chosen option (0-based) among ``n_choices`` lettered A, B, ...: from the boxed or answer-line
    span (a letter standing alone, in parentheses or bold), else the first line of the text that
    starts with a letter and ``)``, ``.`` or ``:``, or a letter alone; None when no form matches."""
    letters = "".join(chr(ord("A") + i) for i in range(n_choices))
    forms = [re.compile(f.format(L=f"[{letters}]"), re.MULTILINE) for f in _LETTER_FORMS]
    span, marked = answer_span(text)
    span = clean_markup(span)
    if marked:
        m = re.search(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])", span)
        return ord(m.group(1)) - ord("A") if m else None
    for form in forms:
        m = form.search(span)
        if m:
            return ord(m.group(1)) - ord("A")
    return None
