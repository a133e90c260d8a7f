"""Parent side of an engine process: start it, talk JSON lines to it, and always stop it.

Why a worker speaking JSON lines on stdin/stdout rather than vLLM's OpenAI server: no port to pick and
race for, no HTTP client or polling for readiness, token ids in and token ids plus log-probs out (so the
prompt is tokenised by spillover exactly as for HF sampling), and the engine's life is tied to a pipe:
when spillover goes away the worker sees end of input, and the kernel kills it if spillover is
SIGKILLed (the worker sets ``PR_SET_PDEATHSIG``).

Stopping: :meth:`EngineProcess.close` asks the worker to shut down, then terminates and finally kills
its whole process group (the worker runs in its own session, so a terminal's Ctrl-C reaches spillover
only and spillover decides). Every live engine is also closed at interpreter exit (``atexit``: normal
exit, errors, KeyboardInterrupt) and on SIGTERM/SIGHUP (handlers installed with the first engine, which
stop the engines and then let the signal act as before).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

from spillover.errors import SpilloverError

_LIVE: set[EngineProcess] = set()
_HANDLERS_INSTALLED = False


def _stop_all() -> None:
    for engine in list(_LIVE):
        engine.close(timeout=1.0)


def _on_signal(signum, frame, _previous={}):  # noqa: B006 - the previous handlers, filled at install
    _stop_all()
    prev = _previous.get(signum, signal.SIG_DFL)
    if callable(prev):
        prev(signum, frame)
        return
    signal.signal(signum, prev)
    os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    atexit.register(_stop_all)
    if threading.current_thread() is threading.main_thread():
        previous = _on_signal.__defaults__[0]
        for sig in (signal.SIGTERM, signal.SIGHUP):
            prev = signal.getsignal(sig)
            if prev is signal.SIG_IGN:
                continue
            previous[sig] = prev if prev is not None else signal.SIG_DFL
            signal.signal(sig, _on_signal)
    _HANDLERS_INSTALLED = True


class EngineProcess:
    """One worker process: ``argv`` is started in its own session with ``env``; stderr goes to ``log``."""

    def __init__(self, argv: list[str], *, env: dict[str, str], log: Path, name: str = "engine",
                 start_timeout: float = 900.0):
        self.argv, self.env, self.log, self.name = argv, env, Path(log), name
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}
        self._buf = b""
        self._lock = threading.Lock()
        self.launched_at: float | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> dict:
        """Start the worker and wait for its ready line; returns what it announced."""
        self.launch()
        return self.wait_ready()

    def launch(self) -> None:
        """Start the worker process without waiting for it to load (:meth:`wait_ready` waits): an engine
        started ahead of need loads while this process does other work. Stopped like a ready one."""
        if self.proc is not None:
            return
        _install_handlers()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.launched_at = time.monotonic()
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         env=self.env, start_new_session=True)
        _LIVE.add(self)

    @property
    def ready(self) -> bool:
        return bool(self.info) and self.alive()

    def wait_ready(self) -> dict:
        """Wait for the launched worker's ready line (at once when it came already); returns what it announced."""
        if self.proc is None:
            raise SpilloverError(f"the {self.name} worker was not started (or was stopped)", fix=self._log_hint())
        if self.info:
            return self.info
        try:
            ready = self._read(self.launched_at + self.start_timeout, "starting")
        except BaseException:
            self.close()
            raise
        if ready.get("event") != "ready":
            self.close()
            raise SpilloverError(f"{self.name} worker sent {ready!r} instead of its ready line", fix=self._log_hint())
        self.info = {k: v for k, v in ready.items() if k != "event"}
        return self.info

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self, timeout: float = 10.0) -> None:
        """Ask the worker to exit, then SIGTERM and SIGKILL its process group; safe to call twice."""
        proc = self.proc
        _LIVE.discard(self)
        if proc is None:
            return
        self.proc = None
        if proc.poll() is None:
            try:
                proc.stdin.write(b'{"op":"shutdown"}\n')
                proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass
            for sig, wait in ((None, timeout), (signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                if sig is not None:
                    try:
                        os.killpg(proc.pid, sig)
                    except ProcessLookupError:
                        break
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        try:  # the group may hold children that outlived the worker
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except (OSError, ValueError):
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ requests
    def request(self, obj: dict, timeout: float = 24 * 3600.0) -> dict:
        """Send one request and return the reply; an error reply or a dead worker raises SpilloverError."""
        with self._lock:
            if not self.alive():
                raise SpilloverError(f"the {self.name} worker is not running", fix=self._log_hint())
            try:
                self.proc.stdin.write((json.dumps(obj, separators=(",", ":")) + "\n").encode())
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError) as e:
                raise SpilloverError(f"the {self.name} worker stopped reading requests ({e})",
                                     fix=self._log_hint()) from None
            try:
                reply = self._read(time.monotonic() + timeout, f"answering {obj.get('op')!r}")
            except BaseException:  # timed out, died or interrupted: a late reply would answer the next request
                self.close(timeout=1.0)
                raise
        if not reply.get("ok"):
            raise SpilloverError(f"the {self.name} worker failed: {reply.get('error')}", fix=self._log_hint())
        return reply

    def _read(self, deadline: float, doing: str) -> dict:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            if time.monotonic() > deadline:
                raise SpilloverError(f"the {self.name} worker timed out {doing}", fix=self._log_hint())
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if chunk:
                    self._buf += chunk
                    continue
            if self.proc.poll() is not None or (ready and not chunk):
                code = self.proc.wait()
                raise SpilloverError(f"the {self.name} worker exited (code {code}) while {doing}:\n{self.log_tail()}",
                                     fix=self._log_hint())
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def _log_hint(self) -> str:
        return f"see the worker's log {self.log}"


def live_engines() -> list[EngineProcess]:
    return list(_LIVE)
