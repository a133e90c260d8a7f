"""User-facing errors. The CLI prints a :class:`SpilloverError` without a traceback and exits 2;
anything else is a bug and keeps its traceback."""

from __future__ import annotations

import difflib


class SpilloverError(Exception):
    """An error the user can fix: says where, what, and how to fix it."""

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


def did_you_mean(name: str, choices: list[str]) -> str:
    """' Did you mean 'x'?' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


class UnknownName(SpilloverError):
    """A registry lookup for a name that is not registered."""

    def __init__(self, kind: str, name: str, choices: list[str], *, where: str | None = None):
        super().__init__(
            f"unknown {kind} {name!r}.{did_you_mean(name, choices)}",
            where=where,
            fix=f"use one of: {', '.join(choices) or '(none registered)'}",
        )
