"""LoRA adapters (PEFT): the spec, applying it, saving with the resolved config beside it, loading, merging.

Defaults are sized for the embedded 135M model (r=16, alpha=32, no rsLoRA, no dropout). The papers
use r=32, alpha=64 with rsLoRA on 7-14B models; at hidden size 576 rank 16 already spans ~3% of the
residual width (r=32 on a 5120-wide 14B model spans 0.6%), alpha/r = 2 keeps the papers' ratio, and
plain LoRA scaling (alpha/r) avoids rsLoRA's larger effective step (alpha/sqrt(r)) at small r.
Set ``rslora: true, r: 32, alpha: 64`` to reproduce the papers' setting exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from spillover import __version__
from spillover.config import StrictModel
from spillover.errors import SpilloverError

ADAPTER_META = "spillover_adapter.json"


class LoraSpec(StrictModel):
    r: int = Field(16, ge=1, description="LoRA rank. Papers: 32 on 7-14B models.")
    alpha: int = Field(32, ge=1, description="LoRA alpha; the update is scaled by alpha/r (alpha/sqrt(r) with rsLoRA).")
    rslora: bool = Field(False, description="Rank-stabilised LoRA scaling (the papers' setting).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules to adapt; 'all-linear' = every attention and MLP projection (the papers' choice), not the LM head.")

    def to_peft(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, use_rslora=self.rslora, lora_dropout=self.dropout,
                          target_modules=self.target_modules, bias="none", task_type="CAUSAL_LM")


def apply_lora(model, spec: LoraSpec):
    from peft import get_peft_model

    return get_peft_model(model, spec.to_peft())


def adapter_spec(peft_model, configured: LoraSpec | None = None) -> LoraSpec:
    """The LoRA spec of the adapter ``peft_model`` actually holds, read from its PEFT config: rank, alpha,
    rsLoRA, dropout. Target modules are ``configured``'s when the rest agrees (so "all-linear" stays as
    written), else the adapted module names. A continued ``init_adapter`` keeps its own rank, whatever
    the config says, and this is what gets recorded."""
    peft = peft_model.peft_config["default"]
    actual = {"r": int(peft.r), "alpha": int(peft.lora_alpha), "rslora": bool(peft.use_rslora),
              "dropout": float(peft.lora_dropout)}
    if configured is not None and configured.model_dump(include=set(actual)) == actual:
        return configured
    targets = peft.target_modules
    names = [targets] if isinstance(targets, str) else sorted({t.rsplit(".", 1)[-1] for t in targets})
    return LoraSpec(**actual, target_modules="all-linear" if names == ["all-linear"] else names)


def save_adapter(peft_model, out_dir: str | Path, *, base_model: str, lora: LoraSpec | None = None,
                 extra: dict | None = None) -> Path:
    """Save adapter weights plus ``spillover_adapter.json`` (base model, the adapter's actual LoRA spec
    (:func:`adapter_spec`), its resolved target modules). ``lora`` is the configured spec: recorded as
    ``lora_configured`` when the adapter differs from it (an ``init_adapter`` of another rank)."""
    out_dir = Path(out_dir)
    peft_model.save_pretrained(out_dir)
    resolved = peft_model.peft_config["default"]
    actual = adapter_spec(peft_model, lora)
    meta = {"base_model": base_model, "lora": actual.model_dump(mode="json"),
            **({"lora_configured": lora.model_dump(mode="json")} if lora is not None and lora != actual else {}),
            "resolved_target_modules": sorted({t.rsplit(".", 1)[-1] for t in resolved.target_modules}),
            "spillover_version": __version__, **(extra or {})}
    (out_dir / ADAPTER_META).write_text(json.dumps(meta, indent=2))
    return out_dir


def read_adapter_meta(adapter_dir: str | Path) -> dict:
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise SpilloverError(f"{adapter_dir} is not a LoRA adapter folder (no adapter_config.json)",
                             fix="point --adapter at a folder written by `spillover train ...` (RUN/adapter) or by PEFT")
    meta_file = adapter_dir / ADAPTER_META
    return json.loads(meta_file.read_text()) if meta_file.is_file() else {}


def load_adapter(model, adapter_dir: str | Path, *, trainable: bool = False):
    """Wrap ``model`` with the adapter in ``adapter_dir`` (inference mode unless ``trainable``)."""
    from peft import PeftModel

    read_adapter_meta(adapter_dir)
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)


def merge_adapter(model_ref: str | None, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Merge an adapter into its base model and save a standalone HF folder (written atomically)."""
    from spillover._io import atomic_dir
    from spillover.models._load import load_model

    model_ref = model_ref or read_adapter_meta(adapter_dir).get("base_model")
    model, tok, _ = load_model(model_ref, device="cpu")
    merged = load_adapter(model, adapter_dir).merge_and_unload()
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return Path(out_dir)
