"""Run directories: the unit of truth for every stage (config, manifest, logs, outputs).

A manifest records versions, inputs' fingerprints, status and timings; it is rewritten atomically
at each status change, so a crashed run reads ``status: running`` with its start time.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import platform
import shutil
from pathlib import Path

from spillover._io import atomic_write_json
from spillover.errors import SpilloverError

MANIFEST = "manifest.json"
_PACKAGES = ("spillover", "torch", "transformers", "peft", "trl", "accelerate", "datasets")


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


def prepare_run_dir(out: str | Path, *, overwrite: bool = False) -> Path:
    """Create ``out``; refuse to mix with an earlier run unless ``overwrite``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SpilloverError(f"output folder {out} already holds a run",
                                 fix="choose another --out, or pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def update_manifest(run_dir: str | Path, **fields) -> dict:
    path = Path(run_dir) / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    manifest.update(fields)
    atomic_write_json(path, manifest)
    return manifest


def read_manifest(run_dir: str | Path) -> dict:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise SpilloverError(f"{run_dir} has no {MANIFEST}", fix="point at a folder written by spillover")
    return json.loads(path.read_text())
