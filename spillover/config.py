"""Strict config base and YAML loading with errors that name file, line and key.

Every config in spillover is a :class:`StrictModel`: unknown keys are errors (a typo never passes
silently) and ``Field(description=...)`` is the one place a setting is documented.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from spillover.errors import SpilloverError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _node_lines(node: yaml.Node, prefix: tuple = ()) -> dict[tuple, int]:
    """Map every key path in a composed YAML tree to its 1-based line."""
    lines = {prefix: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = prefix + (key.value,)
            lines.update(_node_lines(value, path))
            lines[path] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_node_lines(item, prefix + (i,)))
    return lines


def _loc_str(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def format_validation_error(err: ValidationError, source: str, lines: dict[tuple, int] | None = None,
                            fix: str | None = None) -> SpilloverError:
    """Turn a pydantic error into one SpilloverError listing every problem, sorted by line."""
    problems = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        line = None
        if lines:
            for cut in range(len(loc), -1, -1):  # nearest enclosing node that exists in the file
                if loc[:cut] in lines:
                    line = lines[loc[:cut]]
                    break
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        where = f"{source}:{line}" if line else source
        problems.append((line or 0, f"{where}: {_loc_str(loc)}: {msg}"))
    problems.sort()
    text = "invalid config:\n  " + "\n  ".join(p for _, p in problems)
    return SpilloverError(text, fix=fix or "correct the keys named above; see `--help` for valid options")


def parse_yaml(path: Path) -> tuple[yaml.Node | None, Any]:
    """``(composed node tree, data)`` of a YAML file; a syntax error names the file and line."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return yaml.compose(text), yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SpilloverError(f"not valid YAML: {getattr(e, 'problem', e)}", where=where,
                             fix="fix the YAML syntax at that line") from None


def load_yaml_mapping(path: str | Path) -> tuple[dict[str, Any], dict[tuple, int]]:
    """Read a YAML file that must hold a mapping; return it with line numbers per key path."""
    path = Path(path)
    if not path.is_file():
        raise SpilloverError(f"config file not found: {path}", fix="check the path")
    node, data = parse_yaml(path)
    if data is None:
        data, node = {}, None
    if not isinstance(data, dict):
        raise SpilloverError("expected a mapping of keys to values at the top level", where=str(path),
                             fix="write the config as `key: value` lines")
    return data, (_node_lines(node) if node is not None else {})


def validate_config(model: type[M], data: dict[str, Any], source: str,
                    lines: dict[tuple, int] | None = None) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise format_validation_error(e, source, lines) from None


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` win; nested mappings merge key by key; ``None`` means 'not given'."""
    merged = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(model: type[M], path: str | Path | None, overrides: dict[str, Any] | None = None) -> M:
    """Load ``path`` (may be None) as ``model``; ``overrides`` (CLI flags that were given) win over the file."""
    data, lines = load_yaml_mapping(path) if path else ({}, {})
    merged = deep_merge(data, overrides or {})
    return validate_config(model, merged, str(path) if path else "options", lines)


def dump_yaml(model: BaseModel) -> str:
    return yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
