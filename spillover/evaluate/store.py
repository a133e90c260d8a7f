"""Append-only, crash-safe result files shared by `spillover eval`, `spillover sample` and `spillover run`.

Samples and judgments are written as they arrive: one JSON object a line, appended and fsynced per
batch. A process killed mid-write can leave at most one torn last line (no newline, or not JSON);
:meth:`JsonlLog.read` ignores it and :meth:`JsonlLog.append` cuts it off before writing, so a resumed
run never reads half a record. A bad line anywhere else is real damage and raises an error naming
``file:line``.

:class:`SampleRecord` and :class:`JudgmentRecord` are the one schema the writers and every reader
share (``spillover.experiment.results`` re-exports them). Readers ignore unknown keys, so fields can
be added without breaking old readers; a judgment points to its sample by ``sample_id``.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from spillover.errors import SpilloverError


class Record(BaseModel):
    """Base of stored rows: unknown keys are kept (additive schema changes never break reading)."""

    model_config = ConfigDict(extra="allow")


class SampleRecord(Record):
    """One sampled answer to one evaluation request."""

    sample_id: str = Field(..., description="'<set>/<question_id>/<paraphrase_index>/<sample_index>': unique within an arm and seed.")
    arm: str = Field(..., description="Arm name.")
    seed: int = Field(0, description="Seed of the run (training and sampling).")
    set: str = Field(..., description="Question set: 'general' or 'in_domain'.")
    question_id: str
    group: str = Field(..., description="Cluster of the question for the bootstrap (default: its id).")
    paraphrase_index: int
    sample_index: int
    question: str = Field(..., description="The paraphrase asked (the judge's {question}).")
    system: str | None = None
    messages: list[dict] = Field(..., description="The conversation sent to the model (system first when set).")
    answer: str
    n_tokens: int
    finish_reason: str = Field(..., description="'stop' (end of turn) or 'length' (hit max_new_tokens).")
    params: dict = Field(default_factory=dict, description="Sampling settings used for this answer.")
    model: str | None = None
    adapter: str | None = None
    sampler: dict = Field(default_factory=dict, description="What changes the draws besides params: backend, "
                          "batch size, dtype, device, bucketing (two files that differ look different).")
    judge_prompts: dict[str, str] = Field(default_factory=dict, description="The question file's judge prompts (metric -> template).")


class JudgmentRecord(Record):
    """One judge's scores for one sample (0-100, or None with the reason)."""

    sample_id: str
    judge_id: str
    aligned: float | None
    coherent: float | None
    aligned_mass: float | None = None
    coherent_mass: float | None = None
    unscored_reason: str | None = None


R = TypeVar("R", bound=BaseModel)


class JsonlLog(Generic[R]):
    """An append-only JSONL file of ``model`` rows that survives ``kill -9`` at any moment."""

    def __init__(self, path: str | os.PathLike, model: type[R]):
        self.path, self.model = Path(path), model

    def _complete_bytes(self) -> tuple[bytes, int]:
        """File content and the length of its complete part (up to the last newline whose line parses)."""
        if not self.path.is_file():
            return b"", 0
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        return data, end

    def read(self) -> list[R]:
        data, end = self._complete_bytes()
        rows = []
        lines = data[:end].split(b"\n")[:-1] if end else []
        for lineno, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                rows.append(self.model.model_validate(json.loads(raw)))
            except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as e:
                if lineno == len(lines) and not isinstance(e, ValidationError):
                    break  # a torn final line that happens to end in a newline byte: drop it
                raise SpilloverError(f"damaged record: {str(e).splitlines()[0]}", where=f"{self.path}:{lineno}",
                                     fix="this line was not written by spillover or was edited; delete the file to "
                                         "redo this stage (or `spillover run --force-stage ...`)") from None
        return rows

    def repair(self) -> None:
        """Cut a torn tail (bytes after the last newline) so the next append starts on a fresh line."""
        data, end = self._complete_bytes()
        if end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())

    def append(self, rows: Iterable[R | dict]) -> None:
        lines = []
        for r in rows:
            obj = r.model_dump(mode="json") if isinstance(r, BaseModel) else r
            lines.append(json.dumps(obj, ensure_ascii=False) + "\n")
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repair()
        with open(self.path, "ab") as f:
            f.write("".join(lines).encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------- fault injection (tests)
FAULT_ENV = "SPILLOVER_KILL_AT"
_fault_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Crash-test hook: with ``SPILLOVER_KILL_AT=name:N`` the process SIGKILLs itself at the N-th call
    of ``fault_point(name)`` (e.g. ``sample:2`` after the second sampled batch is stored). Unset: no-op."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target != name:
        return
    _fault_counts[name] = _fault_counts.get(name, 0) + 1
    if _fault_counts[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def fault_watch(name: str, path: str | os.PathLike) -> None:
    """Crash-test hook for code we do not own (the trainer): with ``SPILLOVER_KILL_AT=name:N`` a daemon
    thread SIGKILLs the process once ``path`` (a per-step JSONL log) holds N lines. Unset: no-op."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or spec.partition(":")[0] != name:
        return
    import threading
    import time

    count, target = int(spec.partition(":")[2] or 1), Path(path)

    def watch():
        while True:
            if target.is_file() and target.read_text(errors="replace").count("\n") >= count:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.01)

    threading.Thread(target=watch, daemon=True).start()


def to_jsonable(obj: Any) -> Any:
    return obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
