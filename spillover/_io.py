"""Small file helpers shared by every stage: atomic writes, JSONL, hashing.

Atomic means write to a temporary file in the same folder, fsync, then rename, so a reader never
sees a half-written file and a crash leaves the old file (or none) in place. A temporary name says
which process made it (``.NAME.sp<pid>-<host>.<random>.tmp``), so :func:`clean_stale_temps` can
remove what a killed write left behind without touching the temporaries of a live process.

Every text input (JSONL, YAML) is read through :func:`read_text` / :func:`iter_text_lines`, which
turn invalid UTF-8 into ``file:line: not valid UTF-8 (byte 0xe9 at column N)`` with the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from spillover.errors import SpilloverError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _host_tag() -> str:
    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.sp{os.getpid()}-{_host_tag()}."


#: ``.NAME.sp<pid>-<host>.<random>.tmp`` (and ``.tmp.<ext>`` for writers that keep an extension)
_OUR_TMP = re.compile(r"^\..+\.sp(?P<pid>\d+)-(?P<host>[0-9a-f]{8})\.[A-Za-z0-9_]+\.tmp(\.[A-Za-z0-9]+)?$")
STALE_TEMP_AGE_S = 24 * 3600  # a temporary of another host is only removed once it is this old


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_our_temp(name: str) -> bool:
    return _OUR_TMP.match(name) is not None


def clean_stale_temps(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Remove the temporaries a killed atomic write left in ``folder`` (and its subfolders when
    ``recursive``). Only names this module makes are touched, and only when their process is gone (same
    host: pid not running; another host: older than a day). Returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        m = _OUR_TMP.match(entry.name)
        if not m:
            if recursive and entry.is_dir() and not entry.is_symlink():
                removed += clean_stale_temps(entry, recursive=True)
            continue
        if m["host"] == _host_tag():
            stale = int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"]))
        else:
            try:
                stale = time.time() - entry.lstat().st_mtime > STALE_TEMP_AGE_S
            except FileNotFoundError:
                continue
        if stale:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
            removed.append(entry)
    return removed


def read_versioned_json(path: str | os.PathLike, *, name: str, kind: str, file_format: str, version: int,
                        retrain: str) -> dict:
    """A JSON file spillover wrote with ``format`` and ``version`` keys (judge and classifier files), checked
    for both; ``name`` ("classifier file") and ``kind`` ("a classifier reward file") word the errors,
    ``retrain`` is the command that writes a current one."""
    fix = f"point at a file written by `{retrain}`"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpilloverError(f"{name} not found", where=str(path), fix=fix) from None
    except (OSError, ValueError) as e:
        raise SpilloverError(f"{name} is not readable JSON: {e}", where=str(path), fix=fix) from None
    if not isinstance(data, dict) or data.get("format") != file_format:
        raise SpilloverError(f"not {kind} (format should be {file_format!r})", where=str(path), fix=fix)
    if data.get("version") != version:
        raise SpilloverError(f"file version {data.get('version')} is not {version}", where=str(path),
                             fix=f"retrain it with this spillover version: {retrain}")
    return data


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the final file gets normal permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` whole, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the final folder gets normal permissions
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_UTF8_FIX = ("save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 FILE > FILE.new`), "
             "or fix the character at that column")


def _utf8_error(path, lineno: int, raw: bytes, err: UnicodeDecodeError) -> SpilloverError:
    column = len(raw[:err.start].decode("utf-8", errors="replace")) + 1
    return SpilloverError(f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {column})",
                          where=f"{path}:{lineno}", fix=_UTF8_FIX)


def _open_input(path: str | os.PathLike):
    p = Path(path)
    if p.is_dir():
        raise SpilloverError(f"{p} is a folder, not a file", fix="give the path of a file inside it")
    try:
        return open(p, "rb")
    except FileNotFoundError:
        raise SpilloverError(f"file not found: {p}", fix="check the path") from None
    except PermissionError:
        raise SpilloverError(f"cannot read {p} (permission denied)", fix="check the file's permissions") from None


def iter_text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """``(lineno, line)`` of a UTF-8 text file, streamed; a folder, a missing file or invalid UTF-8
    is a SpilloverError naming ``file:line``."""
    with _open_input(path) as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _utf8_error(path, lineno, raw, e) from None


def read_text(path: str | os.PathLike) -> str:
    """The whole text of a UTF-8 file (errors as :func:`iter_text_lines`)."""
    with _open_input(path) as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        start = data.rfind(b"\n", 0, e.start) + 1
        end = data.find(b"\n", e.start)
        raw = data[start:end if end >= 0 else len(data)]
        err = UnicodeDecodeError(e.encoding, raw, e.start - start, e.end - start, e.reason)
        raise _utf8_error(path, data.count(b"\n", 0, e.start) + 1, raw, err) from None


def iter_jsonl_objects(path: str | os.PathLike, *, fix: str = "write one JSON object per line") -> Iterator[tuple[str, int, dict]]:
    """Yield ``(where, lineno, object)`` for each non-blank line; bad JSON, invalid UTF-8 or a non-object
    line raises a SpilloverError naming ``file:line`` with ``fix``."""
    for lineno, raw in iter_text_lines(path):
        if not raw.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            raise SpilloverError(f"not valid JSON ({e.msg} at column {e.colno})", where=where, fix=fix) from None
        if not isinstance(row, dict):
            raise SpilloverError("each line must be a JSON object", where=where, fix=fix)
        yield where, lineno, row


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return [row for _, _, row in iter_jsonl_objects(path)]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-serialisable object in canonical form (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()
