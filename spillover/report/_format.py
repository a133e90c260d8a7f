"""Formatting of numbers and text for the report: estimates with CIs and denominators, Markdown escaping.

Every number shown in the report goes through here, so an empty metric (value None/NaN, or n=0) is
always written as ``n/a (n=0)`` and never as 0. HTML escaping is not done here: the HTML template
autoescapes every value it is given.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping
from typing import Any

NA = "n/a"


class Plain(str):
    """Text the report itself composed (numbers, CIs, n/a): Markdown shows it as is, unescaped.
    Anything read from the evaluation (answers, questions, names, reasons) is a plain ``str`` and is
    escaped. HTML escapes both."""

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#~])")


def finite(x: Any) -> float | None:
    """``x`` as a float, or None when it is missing, not a number, NaN or infinite."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _count(x: Any) -> int:
    return int(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else 0


def _number(x: float, scale: str) -> str:
    if scale == "rate":
        return f"{100 * x:.1f}"
    if scale == "shift":
        return f"{x:+.3f}"
    return f"{x:.1f}"


def estimate(est: Mapping | None, scale: str = "rate", denominator: str = "scored") -> str:
    """``12.5% [8.1, 17.0] (n=240 scored of 256)`` for an Estimate dict; ``n/a (n=0)`` when empty.

    ``scale``: "rate" (a fraction shown as a percentage), "score" (0-100) or "shift" (signed).
    ``denominator``: "scored" (samples with the scores, of all samples), "samples" (all samples) or
    "questions" (questions with enough samples, of all questions).
    """
    est = est if isinstance(est, Mapping) else {}
    n, n_total = _count(est.get("n")), est.get("n_total")
    value = finite(est.get("value"))
    if value is None or n == 0:
        return Plain(f"{NA} (n={n})")
    unit = "%" if scale == "rate" else ""
    text = f"{_number(value, scale)}{unit}"
    lo, hi = finite(est.get("ci_low")), finite(est.get("ci_high"))
    text += f" [{_number(lo, scale)}, {_number(hi, scale)}]" if lo is not None and hi is not None else " [no CI]"
    return Plain(f"{text} ({denominator_text(n, n_total, denominator)})")


def denominator_text(n: int, n_total: Any, denominator: str = "scored") -> str:
    if denominator == "samples" or n_total is None:
        return f"n={n}"
    if denominator == "questions":
        return f"n={n} of {_count(n_total)} questions"
    return f"n={n} scored of {_count(n_total)}"


def unscored(est: Mapping | None) -> str:
    """The unscored share as a count first: ``3 of 11 unscored (27.3% [9.1, 54.5])``, so a reader sees
    how many samples the scored-only metrics left out; ``n/a (n=0)`` without samples."""
    est = est if isinstance(est, Mapping) else {}
    n, value = _count(est.get("n")), finite(est.get("value"))
    if value is None or n == 0:
        return Plain(f"{NA} (n={n})")
    lo, hi = finite(est.get("ci_low")), finite(est.get("ci_high"))
    ci = f" [{_number(lo, 'rate')}, {_number(hi, 'rate')}]" if lo is not None and hi is not None else " [no CI]"
    return Plain(f"{round(value * n)} of {n} unscored ({_number(value, 'rate')}%{ci})")


def rate(x: Any, n: Any) -> str:
    """A bare rate such as the probe's prefer-misaligned share: ``37.5% (n=24)``."""
    value = finite(x)
    return Plain(f"{NA} (n={_count(n)})" if value is None or _count(n) == 0 else f"{100 * value:.1f}% (n={_count(n)})")


def mean_with_ci(value: Any, ci: Any, n: Any, scale: str = "shift", noun: str = "pairs") -> str:
    """``+0.123 [-0.050, +0.300] (n=24 pairs)`` from a value and a ``[low, high]`` pair (probe results);
    ``ci=None`` means the value has no interval (shown without one)."""
    value, n = finite(value), _count(n)
    if value is None or n == 0:
        return Plain(f"{NA} (n={n})")
    lo, hi = (finite(ci[0]), finite(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
    bounds = f" [{_number(lo, scale)}, {_number(hi, scale)}]" if lo is not None and hi is not None else " [no CI]"
    return Plain(f"{_number(value, scale)}{'' if ci is None else bounds} (n={n} {noun})")


def score(x: Any) -> str:
    value = finite(x)
    return Plain(NA if value is None else f"{value:.1f}")


def reasons(counts: Any) -> str:
    """``judge_error: 3; refusal: 1`` or ``none``."""
    if not isinstance(counts, Mapping) or not counts:
        return "none"
    return "; ".join(f"{name}: {_count(k)}" for name, k in counts.items())


def as_text(x: Any) -> str:
    """A config or identity value as text (lists and dicts compactly, None as 'none')."""
    if x is None:
        return "none"
    if isinstance(x, Mapping):
        return ", ".join(f"{k}={as_text(v)}" for k, v in x.items()) or "none"
    if isinstance(x, (list, tuple)):
        return ", ".join(as_text(v) for v in x) or "none"
    return str(x)


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def md_inline(text: Any) -> str:
    """Text safe inside a Markdown paragraph or table cell: HTML-escaped (renderers pass raw HTML
    through), Markdown punctuation and pipes backslash-escaped, newlines turned into ``<br>``."""
    if isinstance(text, Plain):
        return str(text)
    text = html.escape(str(text), quote=False)
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return "<br>".join(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))


def md_code_block(text: str) -> str:
    """A fenced code block whose fence is longer than any backtick run in ``text``."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table; every cell goes through :func:`md_inline`."""
    lines = ["| " + " | ".join(md_inline(h) for h in headers) + " |",
             "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(md_inline(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
