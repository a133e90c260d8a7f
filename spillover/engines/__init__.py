"""Inference engines that run in their own venv and process (vLLM): install them, start a worker, talk to
it, stop it. Sampler backends built on them live in :mod:`spillover.evaluate.engine`."""

from spillover.engines._process import EngineProcess, live_engines
from spillover.engines._venv import (
    RECIPES,
    engine_dir,
    engine_record,
    engine_status,
    install_engine,
    machine_device,
    require_engine,
)
from spillover.engines._vllm import kv_cache_gib, start_vllm, vllm_env, vllm_process

ENGINES = ("hf", "vllm")

__all__ = ["ENGINES", "EngineProcess", "RECIPES", "engine_dir", "engine_record", "engine_status", "install_engine",
           "kv_cache_gib", "live_engines", "machine_device", "require_engine", "start_vllm", "vllm_env",
           "vllm_process"]
