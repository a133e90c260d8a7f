"""Worker side of the engine protocol: JSON lines over stdin/stdout. Standard library only, because it
runs inside the engine's own venv, where spillover is not installed (the worker imports this file by
path).

The parent writes one JSON object per line (``{"op": ...}``) and reads one reply line per request; the
first line the worker writes is ``{"event": "ready", ...}`` once its engine is loaded. Libraries that
print to stdout would corrupt the channel, so :func:`open_channel` moves the protocol onto a private
copy of fd 1 and points fd 1 at stderr (the parent's log file). The worker also asks the kernel to kill
it when its parent dies (``PR_SET_PDEATHSIG``), so even a SIGKILLed spillover leaves no engine behind.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from collections.abc import Callable


def _die_with_parent(owner: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if owner and os.getppid() != owner:  # the parent died before prctl took effect
        os._exit(1)


def open_channel(owner: int):
    """Call first thing in a worker: returns the protocol's output stream; stdout then goes to stderr."""
    _die_with_parent(owner)
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def send(out, obj: dict) -> None:
    out.write(json.dumps(obj, separators=(",", ":")) + "\n")
    out.flush()


def serve(out, handlers: dict[str, Callable[[dict], dict]], ready: dict) -> None:
    """Announce ``ready``, then answer requests until ``{"op": "shutdown"}`` or end of input. A handler's
    exception becomes ``{"ok": false, "error": ...}``; the worker keeps serving."""
    send(out, {"event": "ready", **ready})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            op = request.get("op")
            if op == "shutdown":
                send(out, {"ok": True})
                return
            if op == "ping":
                send(out, {"ok": True, "pong": True})
                continue
            if op not in handlers:
                send(out, {"ok": False, "error": f"unknown op {op!r}"})
                continue
            send(out, {"ok": True, **handlers[op](request)})
        except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
            traceback.print_exc(file=sys.stderr)
            send(out, {"ok": False, "error": f"{type(e).__name__}: {e}"})
