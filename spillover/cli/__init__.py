"""The `spillover` command: a thin typer shell over the library API (no logic lives here)."""

from __future__ import annotations

import sys

from spillover.cli._app import app
from spillover.cli._common import fail
from spillover.errors import SpilloverError


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv if argv is not None else sys.argv[1:], standalone_mode=True)
    except SpilloverError as e:
        fail(e)


__all__ = ["app", "main"]
