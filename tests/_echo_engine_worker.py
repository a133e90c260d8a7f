"""A trivial engine worker for tests of the process lifecycle: the real worker protocol
(spillover/engines/_worker_io.py, imported by path as the vLLM worker does) with simple handlers."""

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "spillover" / "engines"))

from _worker_io import open_channel, serve  # noqa: E402


def main() -> None:
    owner = int(sys.argv[sys.argv.index("--owner") + 1]) if "--owner" in sys.argv else 0
    out = open_channel(owner)
    print("a library printing to stdout must not reach the protocol channel")
    if "--exit-before-ready" in sys.argv:
        print("worker failed to load its model", file=sys.stderr)
        sys.exit(3)
    children = []

    def echo(req):
        print("noise on stdout during a request")
        return {"echo": req["value"]}

    def sleep(req):
        time.sleep(req["seconds"])
        return {"slept": req["seconds"]}

    def fail(req):
        raise ValueError("bad request")

    def crash(req):
        os._exit(5)

    def spawn(req):  # a grandchild in the worker's process group (as an engine's helper would be)
        children.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]))
        return {"child": children[-1].pid}

    serve(out, {"echo": echo, "sleep": sleep, "fail": fail, "crash": crash, "spawn": spawn},
          {"engine": "echo", "pid": os.getpid()})


if __name__ == "__main__":
    main()
