"""Run directories: the unit of truth for every stage (config, manifest, logs, outputs).

A manifest records versions, inputs' fingerprints, status and timings; it is rewritten atomically at
each status change. Reliability rules, all enforced here:

- A run folder is marked by its manifest (``spillover_run``) and lists the entries spillover wrote
  (``files``, refreshed at every manifest update and heartbeat) and those that were already there
  (``foreign``). ``--overwrite`` replaces only a spillover run, and then removes only what it wrote (a
  completed run: its ``files``; a run that stopped early: everything but ``foreign``, since it may
  have written more after its last update); a folder that is not a run is never emptied.
- While a run's status is ``running`` its process stamps ``pid``, ``host`` and a ``heartbeat`` (every
  :data:`HEARTBEAT_S` seconds, from a daemon thread). A ``running`` run whose process is gone (same
  host: the pid is not running; another host: no heartbeat for :data:`STALE_HEARTBEAT_S`) reads as
  ``interrupted`` and is rewritten so.
- A run that stopped before producing anything (only its manifest, config and empty logs) is simply
  reused by the next run in that folder, without ``--overwrite``.
- Temporaries a killed atomic write left behind are removed when a run (re)starts in the folder.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import threading
import time
from pathlib import Path

from spillover._io import atomic_write_json, clean_stale_temps, is_our_temp
from spillover.errors import SpilloverError

MANIFEST = "manifest.json"
_PACKAGES = ("spillover", "torch", "transformers", "peft", "trl", "accelerate", "datasets")
HEARTBEAT_S = 30.0
STALE_HEARTBEAT_S = 600.0
#: entries a run writes before it has any result: a run that holds only these (or empty files) produced nothing
BOOKKEEPING = frozenset({MANIFEST, "config.yaml"})
#: what runs written before manifests listed their files held (those manifests have no ``files``)
_LEGACY_NAMES = frozenset({MANIFEST, "config.yaml", "metrics.jsonl", "adapter", ".trainer", "completions.jsonl"})

_lock = threading.RLock()
_beating: dict[Path, threading.Event] = {}  # run folders this process is running -> stop signal


def environment_info() -> dict:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions}


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- output paths (checked before any work)
def _nearest_existing(path: Path) -> Path:
    anc = path
    while not anc.exists() and not anc.is_symlink() and anc != anc.parent:
        anc = anc.parent
    return anc


def _check_creatable(path: Path, what: str) -> None:
    anc = _nearest_existing(path.parent if path.parent != path else path)
    if anc.exists() and not anc.is_dir():
        raise SpilloverError(f"{what} {path} lies under {anc}, which is a file",
                             fix=f"choose a path for the {what} outside {anc}")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise SpilloverError(f"cannot create {what} {path}: {anc} is not writable",
                             fix=f"choose a path for the {what} in a folder you can write to")


def check_output_dir(out: str | Path) -> Path:
    """``out`` must be a folder or creatable as one; checked before any model is loaded."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SpilloverError(f"output folder {out} is a file", fix="give --out a folder path (new or a spillover run)")
    if out.is_dir():
        if not os.access(out, os.W_OK | os.X_OK):
            raise SpilloverError(f"cannot write to output folder {out}", fix="choose a folder you can write to")
        return out
    _check_creatable(out, "output folder")
    return out


def check_new_output_dir(out: str | Path) -> Path:
    """``out`` must be creatable, or an existing empty folder: for outputs that replace the folder whole."""
    out = check_output_dir(out)
    present = _entries(out)
    if present:
        raise SpilloverError(f"output folder {out} already exists and holds: {_listing(out, present)}",
                             fix="choose a new folder for --out (nothing in an existing folder is replaced)")
    return out


def check_output_file(out: str | Path) -> Path:
    """``out`` must be a file path that can be written (not a folder, not under a file)."""
    out = Path(out)
    if out.is_dir():
        raise SpilloverError(f"output file {out} is a folder", fix="give --out a file path, e.g. answers.jsonl")
    if out.exists():
        if not os.access(out, os.W_OK):
            raise SpilloverError(f"cannot write output file {out}", fix="choose a file you can write")
        return out
    _check_creatable(out, "output file")
    return out


# ---------------------------------------------------------------- manifest
def _read(run_dir: Path) -> dict | None:
    path = run_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _entries(run_dir: Path) -> set[str]:
    return {e.name for e in run_dir.iterdir() if not is_our_temp(e.name)} if run_dir.is_dir() else set()


def update_manifest(run_dir: str | Path, **fields) -> dict:
    """Merge ``fields`` into the manifest (atomically) and refresh its list of spillover-written entries.
    Setting ``status="running"`` stamps pid/host and starts the heartbeat; any other status stops it."""
    run_dir = Path(run_dir)
    with _lock:
        manifest = _read(run_dir)
        if manifest is None:  # a folder not made by prepare_run_dir: what is already there is not ours
            manifest = {"foreign": sorted(_entries(run_dir) - {MANIFEST})}
        manifest.update(fields)
        manifest.setdefault("spillover_run", 1)
        if fields.get("status") == "running":
            manifest.update(pid=os.getpid(), host=socket.gethostname(), heartbeat=now_iso())
        foreign = set(manifest.get("foreign", []))
        manifest["files"] = sorted((set(manifest.get("files", [])) | _entries(run_dir) | {MANIFEST}) - foreign)
        atomic_write_json(run_dir / MANIFEST, manifest)
    if "status" in fields:
        _start_heartbeat(run_dir) if fields["status"] == "running" else _stop_heartbeat(run_dir)
    return manifest


def _start_heartbeat(run_dir: Path) -> None:
    key = run_dir.resolve()
    with _lock:
        if key in _beating:
            return
        stop = _beating[key] = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT_S):
            with _lock:
                if stop.is_set():
                    return
                manifest = _read(run_dir)
                if manifest is None or manifest.get("status") != "running":
                    return
                manifest["heartbeat"] = now_iso()
                foreign = set(manifest.get("foreign", []))
                manifest["files"] = sorted((set(manifest.get("files", [])) | _entries(run_dir)) - foreign)
                atomic_write_json(run_dir / MANIFEST, manifest)

    threading.Thread(target=beat, name=f"spillover-heartbeat:{run_dir.name}", daemon=True).start()


def _stop_heartbeat(run_dir: Path) -> None:
    with _lock:
        stop = _beating.pop(run_dir.resolve(), None)
    if stop is not None:
        stop.set()


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _age_s(stamp: str | None) -> float:
    try:
        return time.time() - _dt.datetime.fromisoformat(stamp).timestamp()
    except (TypeError, ValueError):
        return float("inf")


def run_is_alive(run_dir: Path, manifest: dict) -> bool:
    """Is the process that marked ``manifest`` ``running`` still at it?"""
    pid, host = manifest.get("pid"), manifest.get("host")
    if not isinstance(pid, int):
        return False
    if host == socket.gethostname():
        if pid == os.getpid():
            return run_dir.resolve() in _beating
        return _pid_running(pid) and _age_s(manifest.get("heartbeat")) < STALE_HEARTBEAT_S
    return _age_s(manifest.get("heartbeat")) < STALE_HEARTBEAT_S


def run_status(run_dir: str | Path) -> str | None:
    """The run's status, with a dead ``running`` run rewritten as ``interrupted``; None when not a run."""
    run_dir = Path(run_dir)
    with _lock:
        manifest = _read(run_dir)
        if manifest is None:
            return None
        status = manifest.get("status")
        if status == "running" and not run_is_alive(run_dir, manifest):
            manifest.update(status="interrupted", interrupted_detected=now_iso())
            atomic_write_json(run_dir / MANIFEST, manifest)
            return "interrupted"
        return status


def read_manifest(run_dir: str | Path) -> dict:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise SpilloverError(f"{run_dir} has no {MANIFEST}", fix="point at a folder written by spillover")
    run_status(run_dir)  # a dead run reads as interrupted
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- preparing a run folder
def _is_empty(path: Path) -> bool:
    if path.is_symlink() or not path.exists():
        return True
    if path.is_file():
        return path.stat().st_size == 0
    return all(_is_empty(p) for p in path.iterdir())


def _listing(run_dir: Path, names) -> str:
    names = sorted(names)
    shown = [f"{n}/" if (run_dir / n).is_dir() else n for n in names[:12]]
    return ", ".join(shown) + (f" (+{len(names) - 12} more)" if len(names) > 12 else "")


def _remove(run_dir: Path, names) -> None:
    for name in names:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _plan(out: Path, overwrite: bool, resume: bool) -> tuple[str, set[str], set[str]]:
    """What preparing ``out`` would do: ``("new"|"reuse"|"resume", our entries to remove, foreign entries)``;
    raises the user error when it may not be done."""
    present = _entries(out)
    manifest = _read(out)
    if manifest is None:
        if resume:
            raise SpilloverError(f"nothing to resume in {out}: it holds no spillover run",
                                 fix="drop --resume to start a new run")
        if present:
            raise SpilloverError(f"output folder {out} already holds files and is not a spillover run (no "
                                 f"{MANIFEST}): {_listing(out, present)}",
                                 fix="choose another --out (--overwrite only replaces folders spillover "
                                     "wrote, marked by their manifest.json)")
        return "new", set(), set()
    status = run_status(out)
    manifest = _read(out) or {}
    if status == "running":
        raise SpilloverError(f"a live run is writing to {out} (pid {manifest.get('pid')} on "
                             f"{manifest.get('host')}, started {manifest.get('started')})",
                             fix="wait for it to finish, or choose another --out")
    if status == "complete" or "foreign" not in manifest:
        ours = (set(manifest["files"]) if "files" in manifest else set(_LEGACY_NAMES)) | {MANIFEST}
    else:  # a run that stopped early may have written more since its last manifest update
        ours = present | {MANIFEST}
    ours -= set(manifest.get("foreign", []))
    foreign = present - ours
    if resume:
        if status == "complete":
            raise SpilloverError(f"the run in {out} is complete; nothing to resume",
                                 fix="drop --resume (and pass --overwrite to train again)")
        return "resume", set(), foreign
    produced = sorted(n for n in ours & present if n not in BOOKKEEPING and not _is_empty(out / n))
    if produced and not overwrite:
        hint = " or --resume to continue it from its last checkpoint" if status in ("interrupted", "failed") \
            and manifest.get("kind") == "train" else ""
        raise SpilloverError(f"output folder {out} already holds a run (status {status}; {_listing(out, produced)})",
                             fix=f"choose another --out, pass --overwrite to replace it{hint}")
    return "reuse", ours & present, foreign


def check_run_dir(out: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Everything :func:`prepare_run_dir` would refuse, checked without changing anything (before any work)."""
    out = check_output_dir(out)
    if out.is_dir() or resume:
        _plan(out, overwrite, resume)
    return out


def prepare_run_dir(out: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Create (or take over) the run folder ``out`` following the module's rules; with ``resume`` an
    interrupted or failed run is kept as it is for the caller to continue."""
    out = check_output_dir(out)
    if resume and not out.is_dir():
        _plan(out, overwrite, resume)  # raises: nothing to resume
    out.mkdir(parents=True, exist_ok=True)
    with _lock:
        clean_stale_temps(out, recursive=True)
        action, remove, foreign = _plan(out, overwrite, resume)
        if action == "resume":
            return out
        _remove(out, remove)
        atomic_write_json(out / MANIFEST, {"spillover_run": 1, "created": now_iso(), "foreign": sorted(foreign),
                                           "files": [MANIFEST]})
    return out
