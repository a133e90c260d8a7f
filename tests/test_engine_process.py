"""Engine process lifecycle with a trivial echo worker (no vLLM needed): the JSON-lines protocol, errors
with the worker's log, and no worker left after success, failure, SIGINT, SIGTERM or SIGKILL of spillover."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from spillover.engines import EngineProcess, live_engines
from spillover.errors import SpilloverError

WORKER = Path(__file__).with_name("_echo_engine_worker.py")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state


def _gone(pid: int, within: float = 10.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _engine(tmp_path, *extra) -> EngineProcess:
    return EngineProcess([sys.executable, str(WORKER), "--owner", str(os.getpid()), *extra], env=dict(os.environ),
                         log=tmp_path / "worker.log", name="echo", start_timeout=60)


def test_round_trip_and_close(tmp_path):
    engine = _engine(tmp_path)
    info = engine.start()
    pid = engine.pid
    assert info["engine"] == "echo" and info["pid"] == pid
    assert engine in live_engines()
    for value in ([1, 2, 3], {"a": "ü"}, "x" * 200_000):  # stdout noise never reaches the channel
        assert engine.request({"op": "echo", "value": value})["echo"] == value
    assert "must not reach the protocol channel" in (tmp_path / "worker.log").read_text()
    engine.close()
    assert _gone(pid) and engine not in live_engines()
    engine.close()  # twice is fine
    with pytest.raises(SpilloverError, match="not running"):
        engine.request({"op": "echo", "value": 1})


def test_handler_error_is_reported_and_worker_keeps_serving(tmp_path):
    with _engine(tmp_path) as engine:
        engine.start()
        with pytest.raises(SpilloverError, match="ValueError: bad request") as e:
            engine.request({"op": "fail"})
        assert "worker.log" in str(e.value)
        with pytest.raises(SpilloverError, match="unknown op"):
            engine.request({"op": "nope"})
        assert engine.request({"op": "echo", "value": 7})["echo"] == 7


def test_worker_death_mid_request_raises_with_log_tail(tmp_path):
    engine = _engine(tmp_path)
    engine.start()
    with pytest.raises(SpilloverError, match=r"exited \(code 5\) while answering 'crash'"):
        engine.request({"op": "crash"})
    engine.close()


def test_worker_that_dies_while_starting(tmp_path):
    engine = _engine(tmp_path, "--exit-before-ready")
    with pytest.raises(SpilloverError, match="failed to load its model"):
        engine.start()
    assert engine.proc is None and engine not in live_engines()


def test_close_kills_the_whole_process_group(tmp_path):
    engine = _engine(tmp_path)
    engine.start()
    child = engine.request({"op": "spawn"})["child"]
    assert _alive(child)
    engine.close(timeout=2)
    assert _gone(child), "a process the worker started outlived close()"


def test_timeout_stops_the_worker(tmp_path):
    engine = _engine(tmp_path)
    engine.start()
    pid = engine.pid
    with pytest.raises(SpilloverError, match="timed out"):
        engine.request({"op": "sleep", "seconds": 60}, timeout=0.5)
    assert _gone(pid) and not engine.alive()  # its late reply could otherwise answer the next request


PARENT = textwrap.dedent("""
    import json, os, sys
    from spillover.engines import EngineProcess
    engine = EngineProcess([sys.executable, {worker!r}, "--owner", str(os.getpid())], env=dict(os.environ),
                           log={log!r}, name="echo")
    engine.start()
    child = engine.request({{"op": "spawn"}})["child"]
    print(json.dumps({{"worker": engine.pid, "child": child}}), flush=True)
    {tail}
""")


@pytest.mark.parametrize("how", ["sigint", "sigterm", "sigkill", "error", "success"])
def test_no_worker_left_when_spillover_ends(tmp_path, how):
    """A parent process holding an engine mid-request ends by Ctrl-C, SIGTERM, SIGKILL, an error or normally."""
    tail = {"error": "raise RuntimeError('boom')", "success": "pass"}.get(how, 'engine.request({"op": "sleep", "seconds": 60})')
    script = PARENT.format(worker=str(WORKER), log=str(tmp_path / "worker.log"), tail=tail)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = json.loads(proc.stdout.readline())
    assert _alive(pids["worker"])
    if how in ("sigint", "sigterm", "sigkill"):
        time.sleep(0.3)  # the parent is now waiting on the worker's reply
        proc.send_signal({"sigint": signal.SIGINT, "sigterm": signal.SIGTERM, "sigkill": signal.SIGKILL}[how])
    proc.wait(30)
    assert _gone(pids["worker"]), f"worker left running after {how}"
    if how != "sigkill":  # a SIGKILLed parent cannot stop the worker's children; the kernel kills the worker
        assert _gone(pids["child"]), f"worker's child left running after {how}"
    else:
        os.kill(pids["child"], signal.SIGKILL)
    if how == "sigterm":
        assert proc.returncode == -signal.SIGTERM
