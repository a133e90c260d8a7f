"""Docs and help text name things that exist: dotted ``spillover.*`` paths and ``spillover ...`` commands."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import typer

from spillover.cli._app import app

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "spillover").rglob("*.py")) + [ROOT / "README.md"]
_DOTTED = re.compile(r"\bspillover(?:\.[A-Za-z_]\w*)+")
_COMMAND_SPAN = re.compile(r"`spillover ([^`]+)`")  # inline code spans: `spillover rewards list`
_COMMAND_LINE = re.compile(r"^\s*(?:\$ )?spillover ((?:[a-z][\w-]*)(?: [a-z][\w-]*)?)", re.MULTILINE)  # README blocks


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def _references(pattern: re.Pattern, group: int = 0, sources: list[Path] = SOURCES) -> list[tuple[str, str]]:
    found = []
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for m in pattern.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found.append((f"{path.relative_to(ROOT)}:{line}", m.group(group)))
    return found


def test_dotted_spillover_paths_in_docs_exist():
    missing = [(where, ref) for where, ref in _references(_DOTTED) if not _resolves(ref)]
    assert not missing, f"docs cite modules or names that do not exist (moved?): {missing}"


def _command_exists(words: list[str]) -> bool:
    command = typer.main.get_command(app)
    for word in words:
        if not hasattr(command, "commands"):  # a leaf command (typer vendors its own click)
            return True  # the rest are the command's arguments
        if word not in command.commands:
            return False
        command = command.commands[word]
    return True


def test_spillover_commands_named_in_docs_and_help_exist():
    named = _references(_COMMAND_SPAN, 1) + _references(_COMMAND_LINE, 1, [ROOT / "README.md"])
    words = []
    for where, text in named:  # the command words: up to the first option, placeholder or argument
        plain = []
        for word in text.split()[:2]:
            if not re.fullmatch(r"[a-z][a-z-]*", word):
                break
            plain.append(word)
        words.append((where, plain))
    assert len(words) > 5  # the scan sees the help texts and the README
    missing = [(where, " ".join(w)) for where, w in words if w and not _command_exists(w)]
    assert not missing, f"docs or help name commands that do not exist: {missing}"


@pytest.mark.parametrize("words, exists", [(["rewards", "list"], True), (["list", "rewards"], False),
                                           (["train", "grpo"], True), (["train", "rl"], False)])
def test_command_lookup(words, exists):
    assert _command_exists(words) is exists
