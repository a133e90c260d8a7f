"""Find live engine worker processes by their command line (for the no-orphan tests)."""

from __future__ import annotations

from pathlib import Path


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def worker_pids(script_suffix: str, owner: int | None = None) -> list[int]:
    """Live processes running a script whose path ends with ``script_suffix`` (and, when given, started
    with ``--owner owner``)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not any(a.endswith(script_suffix.encode()) for a in argv):
            continue
        if owner is not None and (b"--owner" not in argv or argv[argv.index(b"--owner") + 1:][:1] != [str(owner).encode()]):
            continue
        if alive(int(proc.name)):
            found.append(int(proc.name))
    return found
