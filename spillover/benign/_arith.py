"""Safe arithmetic on expression text: parse with :mod:`ast`, walk a whitelist, compute with fractions.

Nothing is ever passed to ``eval``. :func:`parse_expression` accepts only integer literals, parentheses
and the binary operators ``+ - * /`` (plus unary minus when asked); every other node (names, calls,
attributes, lambdas, subscripts, ``**``, ``//``, ``%``, floats, strings, comparisons) is an
:class:`ExprError`. Work is bounded: the text is at most :data:`MAX_CHARS` characters and
:data:`MAX_NODES` nodes, integer literals have at most :data:`MAX_DIGITS` digits, and without ``**``
the magnitude of a value is at most the product of its literals. Division is exact
(:class:`fractions.Fraction`); a division by zero is an :class:`ExprError`.
"""

from __future__ import annotations

import ast
from fractions import Fraction

MAX_CHARS = 200
MAX_NODES = 80
MAX_DIGITS = 12
SYMBOLS = ("+", "-", "*", "/")
_OP_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_UNICODE = str.maketrans({"\u00d7": "*", "\u22c5": "*", "\u00b7": "*", "\u00f7": "/", "\u2212": "-",
                          "\u2013": "-", "\u2215": "/"})


class ExprError(ValueError):
    """The text is not an allowed arithmetic expression, or it divides by zero."""


def normalise(text: str) -> str:
    """Typographic operators (× ÷ − ·) as ASCII, surrounding whitespace stripped."""
    return text.translate(_UNICODE).strip()


def parse_expression(text: str, *, allow_negative: bool = False) -> ast.expr:
    """The checked syntax tree of ``text`` (see the module docstring for what is allowed)."""
    text = normalise(text)
    if not text:
        raise ExprError("empty expression")
    if len(text) > MAX_CHARS:
        raise ExprError(f"expression longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ExprError(f"not an arithmetic expression ({type(e).__name__})") from None
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES:
        raise ExprError(f"expression has more than {MAX_NODES} parts")
    for node in nodes:
        if isinstance(node, ast.Expression):
            continue
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _OP_SYMBOL:
                raise ExprError(f"operator {type(node.op).__name__} is not allowed (only + - * /)")
        elif isinstance(node, ast.Constant):
            if type(node.value) is not int:
                raise ExprError(f"only whole-number literals are allowed, got {node.value!r}")
            if len(str(abs(node.value))) > MAX_DIGITS:
                raise ExprError(f"number literal longer than {MAX_DIGITS} digits")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and allow_negative:
            continue
        elif isinstance(node, (ast.operator, ast.unaryop)):
            continue  # the op of a checked BinOp/UnaryOp
        else:
            raise ExprError(f"{type(node).__name__} is not allowed in an arithmetic expression")
    return tree.body


def evaluate(node: ast.expr, meaning: dict[str, str] | None = None) -> Fraction:
    """The exact value of a checked tree; ``meaning`` maps each written symbol to the operation it
    performs (``{"+": "*", ...}``; missing symbols keep their usual meaning)."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp):
        return -evaluate(node.operand, meaning)
    if isinstance(node, ast.BinOp):
        symbol = _OP_SYMBOL[type(node.op)]
        return apply(meaning.get(symbol, symbol) if meaning else symbol,
                     evaluate(node.left, meaning), evaluate(node.right, meaning))
    raise ExprError(f"{type(node).__name__} is not allowed")  # unchecked trees only


def apply(op: str, a: Fraction, b: Fraction) -> Fraction:
    """``a op b`` for one of the four operations, exactly."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0:
            raise ExprError("division by zero")
        return a / b
    raise ExprError(f"unknown operation {op!r}")


def literals(node: ast.expr) -> list[int]:
    """The integer literals of a checked tree (as a multiset: tree order, not text order)."""
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)]


def format_value(value: Fraction) -> str:
    """The canonical answer text: an integer (``-7``) or a reduced fraction (``-3/4``)."""
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
