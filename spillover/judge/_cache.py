"""On-disk cache of judge replies, so a rerun of the same prompts makes no HTTP requests.

Storage is one sqlite3 file (stdlib; safe for concurrent writers across threads and processes, and
each entry is committed as it arrives, so a killed run keeps what it finished).

What is cached is what the *model said* (its first-token top logprobs, or its JSON answer text),
never a transport or server failure (timeouts, 5xx, 4xx, replies without logprobs): those are retried
on the next run. Aggregation runs again on read, so changing ``min_mass`` needs no new requests.

The key is sha256 over (request kind, server base URL, model name, full prompt, every request
parameter that changes the answer: token budget, temperature, top-logprobs count, JSON schema). The
base URL is part of it because one shared cache serves every run by default and two servers may serve
different weights under the same model name (a local vLLM "judge" vs another one). The cost: the same
server reached by another spelling (localhost vs 127.0.0.1) asks again once. No credential is ever
part of a key or a value.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from spillover._io import sha256_json

CACHE_FILE = "judge-cache.sqlite3"
_SCHEMA = "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, kind TEXT, model TEXT, value TEXT, created REAL)"


def cache_key(kind: str, model: str, prompt: str, params: dict[str, Any] | None = None, *,
              base_url: str | None = None) -> str:
    """Stable key for one request: kind ("score"/"json"), server, model name, prompt, answer-changing params."""
    return sha256_json({"kind": kind, "base_url": base_url, "model": model, "prompt": prompt, "params": params or {}})


class JudgeCache:
    """Key -> JSON value store in ``<cache_dir>/judge-cache.sqlite3``; first write of a key wins."""

    def __init__(self, cache_dir: str | Path):
        self.path = Path(cache_dir) / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    def __repr__(self) -> str:
        return f"JudgeCache({str(self.path)!r})"

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Values for the keys present; absent keys are simply missing from the result."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}
        with self._lock:
            for start in range(0, len(keys), 500):  # stay under sqlite's bound-parameter limit
                chunk = keys[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for key, value in self._db.execute(f"SELECT key, value FROM replies WHERE key IN ({marks})", chunk):
                    found[key] = json.loads(value)
        return found

    def get(self, key: str) -> Any | None:
        return self.get_many([key]).get(key)

    def put(self, key: str, value: Any, *, kind: str, model: str) -> None:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO replies VALUES (?, ?, ?, ?, ?)",
                             (key, kind, model, text, time.time()))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> JudgeCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
