"""Helpers every loader shares: read a raw file in its own format, check its columns, write the result.

Raw files are read by extension: ``.parquet`` (pyarrow), ``.jsonl``/``.json`` (one object a line, or one
JSON list), ``.csv`` (the csv module, header row). A missing column is an error naming the dataset, the
file and the columns it does have, because it means the published layout is not the one the entry maps.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path

from spillover._io import iter_jsonl_objects, read_text
from spillover.data._chat import _check_messages, strip_qwen3_markers
from spillover.data._registry import Converted
from spillover.errors import SpilloverError


def read_rows(path: Path) -> tuple[list[str], list[tuple[str, dict]]]:
    """``(columns, [(where, row), ...])`` of one raw file; ``where`` is ``file:line`` or ``file row N``."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise SpilloverError(f"cannot read parquet file {path}: {e}",
                                 fix="delete the dataset's cache folder and fetch it again") from None
        return list(table.column_names), [(f"{path} row {i}", r) for i, r in enumerate(table.to_pylist())]
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = [(f"{path}:{reader.line_num}", dict(r)) for r in reader]
            return list(reader.fieldnames or []), rows
    if suffix in (".jsonl", ".json"):
        text = read_text(path).lstrip()
        if suffix == ".json" and text.startswith("["):
            data = json.loads(text)
            rows = [(f"{path} item {i}", r) for i, r in enumerate(data) if isinstance(r, dict)]
        else:
            rows = [(where, row) for where, _, row in iter_jsonl_objects(path)]
        columns = list(dict.fromkeys(k for _, r in rows for k in r))
        return columns, rows
    raise SpilloverError(f"unsupported raw file type {suffix!r}: {path}",
                         fix="the dataset's layout changed; update its registry entry")


def read_all(entry, files: list[Path], needed: Iterable[str]) -> list[tuple[str, dict]]:
    """Rows of every raw file, after checking each has the ``needed`` columns."""
    needed = list(needed)
    out = []
    for path in files:
        columns, rows = read_rows(path)
        missing = [c for c in needed if c not in columns]
        if missing:
            raise SpilloverError(
                f"dataset {entry.name!r}: {path.name} lacks column(s) {missing}; it has {columns}",
                where=str(path),
                fix=f"the published layout differs from the registry's mapping ({entry.mapping}); "
                    "update the entry in spillover/data/sources/ (or report it)")
        out.extend(rows)
    return out


def text_of(value, where: str, column: str, *, required: bool = True) -> str | None:
    """A non-empty string cell (whitespace kept), or None when optional and empty/missing."""
    if value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and value != value):
        if required:
            raise SpilloverError(f"column {column!r} is empty", where=where,
                                 fix="the row is malformed in the source; report it or drop it upstream")
        return None
    if not isinstance(value, str):
        raise SpilloverError(f"column {column!r} must be text, got {type(value).__name__}", where=where,
                             fix="the published layout differs from the registry's mapping; update the entry")
    return value


def chat(messages: list[dict], where: str) -> list[dict]:
    """Validated messages with Qwen3 non-thinking markers removed."""
    return _check_messages(strip_qwen3_markers(_check_messages(messages, where)), where)


def jsonl(entry, rows: list[dict]) -> Converted:
    if not rows:
        raise SpilloverError(f"dataset {entry.name!r}: the conversion kept no rows",
                             fix="check the source (empty split?) and the entry's filter")
    return Converted(".jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), len(rows))
