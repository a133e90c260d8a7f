"""Start the vLLM worker (``_vllm_worker.py``) in the engine venv with the environment it needs."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

from spillover.engines._process import EngineProcess
from spillover.engines._venv import engine_dir, engine_python, require_engine

WORKER = Path(__file__).with_name("_vllm_worker.py")
_LOG_IDS = itertools.count()  # two workers started in one second get two logs


def _mem_available_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 8.0


def kv_cache_gib(available_gib: float | None = None) -> int:
    """CPU KV-cache size: a tenth of the memory available now, 1..16 GiB (vLLM's default is a fixed 4)."""
    available = _mem_available_gib() if available_gib is None else available_gib
    return int(max(1, min(16, available // 10)))


def _threads_bind(env: dict[str, str]) -> str:
    """``auto`` (vLLM binds one OpenMP thread per physical core), unless OMP_NUM_THREADS asks for fewer
    threads than this process may use (a shared machine's job slot): then ``nobind``, and the worker's
    torch keeps OMP_NUM_THREADS threads."""
    try:
        wanted = int(env.get("OMP_NUM_THREADS", "0"))
    except ValueError:
        wanted = 0
    return "nobind" if 0 < wanted < len(os.sched_getaffinity(0)) else "auto"


def vllm_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The worker's environment: caches under ``$SPILLOVER_HOME``, the engine in one process (no engine-core
    child to orphan), CPU threads bound automatically (:func:`_threads_bind`), KV cache sized from memory;
    settings the user exported win."""
    env = dict(os.environ if base is None else base)
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):  # nothing of spillover's venv leaks in
        env.pop(key, None)
    env.setdefault("VLLM_CACHE_ROOT", str(engine_dir("vllm") / "cache"))
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", _threads_bind(env))
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib()))
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return env


def vllm_process(model_dir: str | Path, *, dtype: str = "float32", seed: int = 0, max_num_seqs: int | None = None,
                 max_model_len: int | None = None, compile: bool = False) -> EngineProcess:
    """A vLLM worker on ``model_dir`` (an HF folder), not started yet: ``start()`` it (or ``launch()`` it now
    and ``wait_ready()`` when needed); close it when done."""
    require_engine("vllm")
    argv = [str(engine_python("vllm")), str(WORKER), "--model", str(model_dir), "--dtype", dtype,
            "--owner", str(os.getpid()), "--seed", str(seed)]
    if max_num_seqs:
        argv += ["--max-num-seqs", str(max_num_seqs)]
    if max_model_len:
        argv += ["--max-model-len", str(max_model_len)]
    if compile:
        argv.append("--compile")
    log = engine_dir("vllm") / "logs" / f"worker-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{next(_LOG_IDS)}.log"
    return EngineProcess(argv, env=vllm_env(), log=log, name="vllm")


def start_vllm(model_dir: str | Path, **settings) -> EngineProcess:
    """A started vLLM worker serving ``model_dir`` (settings of :func:`vllm_process`); close it when done."""
    engine = vllm_process(model_dir, **settings)
    engine.start()
    return engine
