"""Strict config base and YAML loading with errors that name file, line and key.

Every config in spillover is a :class:`StrictModel`: unknown keys are errors (a typo never passes
silently) and ``Field(description=...)`` is the one place a setting is documented.

A ``dict`` field that holds another schema's settings (an experiment's ``sft:`` section, say) is
declared ``Annotated[dict[str, Any], Section(SFTConfig, ...)]``: :func:`validate_config` then checks
it as that schema too, so every problem inside it is reported at its own YAML line, together with the
enclosing config's problems.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from spillover._io import read_text
from spillover.errors import SpilloverError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class Section:
    """Marks a ``dict`` field as the settings of ``model``. ``fixed`` fills keys the enclosing config sets
    itself (only to validate); ``reserved`` keys may not be written by the user (``owner`` sets them).
    Used as ``Annotated`` metadata it also validates in plain ``model_validate`` (one summarised error);
    :func:`validate_config` reports each problem at its own key path instead."""

    def __init__(self, model: type[BaseModel], *, fixed: Mapping[str, Any] | None = None,
                 reserved: Iterable[str] = (), owner: str = "the enclosing config"):
        self.model, self.fixed, self.reserved, self.owner = model, dict(fixed or {}), tuple(reserved), owner

    def problems(self, value: Any) -> list[dict]:
        """pydantic-style error dicts (``loc``, ``msg``, ``type``) with ``loc`` relative to the section."""
        if not isinstance(value, dict):
            return []
        errors = [{"loc": (k,), "msg": f"set by {self.owner}; remove it", "type": "reserved"}
                  for k in value if k in self.reserved]
        try:
            self.model.model_validate({**{k: v for k, v in value.items() if k not in self.reserved}, **self.fixed})
        except ValidationError as e:
            errors += [{"loc": tuple(err["loc"]), "msg": err["msg"], "type": err["type"]} for err in e.errors()]
        return errors

    def __get_pydantic_core_schema__(self, source, handler):
        from pydantic_core import core_schema

        def check(value):
            problems = self.problems(value)
            if problems:
                raise ValueError("; ".join(f"{_loc_str(p['loc'])}: {_clean_msg(p)}" for p in problems))
            return value

        return core_schema.no_info_after_validator_function(check, handler(source))


def _section_problems(model: type[BaseModel], data: Any, prefix: tuple = ()) -> tuple[list[dict], set[tuple]]:
    """Problems inside every :class:`Section` field of ``model`` (recursing into nested models), with
    absolute ``loc``; and the key paths of the sections that had any."""
    problems, covered = [], set()
    if not isinstance(data, dict):
        return problems, covered
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key not in data:
            continue
        section = next((m for m in field.metadata if isinstance(m, Section)), None)
        if section is not None:
            found = section.problems(data[key])
            if found:
                covered.add(prefix + (key,))
                problems += [{**p, "loc": prefix + (key,) + tuple(p["loc"])} for p in found]
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            sub, sub_covered = _section_problems(field.annotation, data[key], prefix + (key,))
            problems += sub
            covered |= sub_covered
    return problems, covered


_PREFIXES = ("Value error, ", "Assertion failed, ")


def _clean_msg(err: dict) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key (typo?)"
    msg = err["msg"]
    for prefix in _PREFIXES:
        msg = msg.removeprefix(prefix)
    return msg


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


def format_validation_error(err: ValidationError | list[dict], source: str, lines: dict[tuple, int] | None = None,
                            fix: str | None = None) -> SpilloverError:
    """Turn a pydantic error (or a list of its error dicts) into one SpilloverError listing every problem,
    each at its own line, sorted by line."""
    problems = []
    for e in (err.errors() if isinstance(err, ValidationError) else err):
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        line = None
        if lines:
            for cut in range(len(loc), -1, -1):  # nearest enclosing node that exists in the file
                if loc[:cut] in lines:
                    line = lines[loc[:cut]]
                    break
        msg = _clean_msg(e)
        where = f"{source}:{line}" if line else source
        problems.append((line or 0, f"{where}: {_loc_str(loc)}: {msg}"))
    problems.sort()
    text = "invalid config:\n  " + "\n  ".join(p for _, p in problems)
    return SpilloverError(text, fix=fix or "correct the keys named above; see `--help` for valid options")


def parse_yaml(path: Path) -> tuple[yaml.Node | None, Any]:
    """``(composed node tree, data)`` of a YAML file; a syntax error names the file and line."""
    text = read_text(path)
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
    if path.is_dir():
        raise SpilloverError(f"config {path} is a folder, not a file", fix="give the path of a YAML file")
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
    """Validate ``data`` as ``model``; every problem (inside :class:`Section` fields too) is reported at
    once, each at its own line of ``source``."""
    section_errors, covered = _section_problems(model, data)
    try:
        result = model.model_validate(data)
    except ValidationError as e:
        errors = [err for err in e.errors()
                  if not any(tuple(err["loc"])[:len(c)] == c for c in covered)] + section_errors
        raise format_validation_error(errors, source, lines) from None
    if section_errors:  # pragma: no cover - a Section field validates in model_validate too
        raise format_validation_error(section_errors, source, lines)
    return result


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
