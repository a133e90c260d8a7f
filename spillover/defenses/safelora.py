"""SafeLoRA (arXiv 2405.16833): project LoRA updates that stray from the alignment direction.

For every LoRA module, with ``V = W_aligned - W_base`` over a base/aligned pair of the trained model
(modules matched by name), ``C = V Vᵀ / ‖V‖_F``. A module whose update ``ΔW = s·B·A`` has
``cos(ΔW, CΔW) <= threshold`` (paper τ = 0.3; or, with ``top_k``, the k least similar modules) gets
``B <- B + weight·(C·B - B)``; ``weight = 1`` is the paper's ``B' = C·B`` (``ΔW' = C·ΔW``), 0 is off.
The formulas and the Pdst diagnostic are in :mod:`spillover.defenses._safelora_math`.

A pair is two model references (``embedded``, a local folder, a hub id), each optionally with a LoRA
adapter merged in (``base_adapter`` / ``aligned_adapter``). When both sides are the same model, ``V`` is
the difference of the adapters' updates and no model is loaded. ``C`` is cached on disk under
``$SPILLOVER_HOME/safelora/<key>/`` keyed by the pair's identity (hub id, or file sizes and times of a
local folder; adapter weight hashes) and the module names.

Proxy pair for the embedded model (no pre-alignment SmolLM2 checkpoint offline): ``base: embedded``
plus ``aligned_adapter:`` a safety SFT adapter trained on the embedded model (e.g. on
``bundled:safe_instruct``); see the README for what that proxy can and cannot stand for.

Used post hoc on a saved adapter (:func:`safelora_adapter`, ``spillover defenses safelora``) or as a
training defense (after every ``every`` optimizer steps, and always after the last step). Each
projection writes one row to ``safelora.jsonl`` in the run directory: step, per-module similarity,
projected modules, Pdst.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from rich.console import Console
from rich.progress import track

from spillover._io import atomic_dir, atomic_write_json, sha256_file, sha256_json
from spillover.defenses import _safelora_math as M
from spillover.defenses._base import Defense, register_defense
from spillover.errors import SpilloverError

_PEFT_PREFIX = "base_model.model."
_CACHE_VERSION = 2


# ---------------------------------------------------------------- the pair
def _model_identity(ref: str) -> dict:
    from spillover.models import resolve_model

    model = resolve_model(ref)
    if model.kind == "hub":
        return {"hub": model.ref}
    files = sorted(p for p in Path(model.path).iterdir() if p.suffix in (".json", ".safetensors", ".bin"))
    return {"path": model.path, "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def _adapter_file(adapter_dir: str | Path) -> Path:
    from spillover.models import read_adapter_meta

    read_adapter_meta(adapter_dir)  # a clear error when the folder is not an adapter
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (Path(adapter_dir) / name).is_file():
            return Path(adapter_dir) / name
    raise SpilloverError(f"{adapter_dir} holds no adapter weights (adapter_model.safetensors)",
                         fix="point at a complete adapter folder written by `spillover train ...` or PEFT")


def check_pair(base: str, aligned: str, base_adapter: str | None, aligned_adapter: str | None) -> None:
    """Fail fast (before any training) when a side of the pair does not exist or the pair is empty."""
    from spillover.models import resolve_model

    for ref in (base, aligned):
        resolve_model(ref)
    for adapter in (base_adapter, aligned_adapter):
        if adapter is not None:
            _adapter_file(adapter)
    if _same_model(base, aligned) and base_adapter == aligned_adapter:
        raise SpilloverError(f"SafeLoRA pair is one model twice ({base!r}), so W_aligned - W_base = 0",
                             fix="give a different `base` (e.g. Qwen/Qwen2.5-7B for Qwen/Qwen2.5-7B-Instruct) or, "
                                 "for the embedded proxy, `aligned_adapter:` a safety SFT adapter")


def _same_model(a: str, b: str) -> bool:
    from spillover.models import resolve_model

    return resolve_model(a).path == resolve_model(b).path


def _read_lora(adapter_dir: str | Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float, dict]:
    """``{module: (A, B)}``, the default scale s and the adapter config, straight from the weight file."""
    path = _adapter_file(adapter_dir)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    pairs = {}
    for key, a in state.items():
        if key.endswith(".lora_A.weight"):
            module = key.removeprefix(_PEFT_PREFIX).removesuffix(".lora_A.weight")
            pairs[module] = (a, state[key.replace(".lora_A.", ".lora_B.")])
    if not pairs:
        raise SpilloverError(f"{path} holds no LoRA A/B weights", fix="SafeLoRA works on LoRA adapters only")
    return pairs, _scale(config), config


def _scale(config: dict, module: str | None = None, rank: int | None = None) -> float:
    r = rank or config["r"]
    alpha = config.get("lora_alpha", r)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if module and module.endswith(pattern):
            alpha = value
    return alpha / (r ** 0.5) if config.get("use_rslora") else alpha / r


def _adapter_factors(adapter_dir: str | Path, sign: float = 1.0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each module's update ``sign·s·B·A`` kept as the factors ``(sign·s·B, A)``."""
    pairs, _, config = _read_lora(adapter_dir)
    return {m: (sign * _scale(config, m, a.shape[0]) * b.float(), a.float()) for m, (a, b) in pairs.items()}


Delta = tuple[torch.Tensor, torch.Tensor | None]  # V = P @ Q, or V = P when Q is None


def alignment_deltas(modules: list[str], *, base: str, aligned: str, base_adapter: str | None = None,
                     aligned_adapter: str | None = None) -> dict[str, Delta]:
    """``V = W_aligned - W_base`` for each module name (``model.layers.0.self_attn.q_proj``...) the pair
    changes, as ``(P, Q)`` with ``V = P Q`` when only adapters differ (no model weights are loaded), else
    ``(V, None)``."""
    if _same_model(base, aligned):
        plus = _adapter_factors(aligned_adapter) if aligned_adapter else {}
        minus = _adapter_factors(base_adapter, -1.0) if base_adapter else {}
        out = {}
        for m in modules:
            parts = [f for f in (plus.get(m), minus.get(m)) if f is not None]
            if parts:
                out[m] = (torch.cat([p for p, _ in parts], dim=1), torch.cat([q for _, q in parts], dim=0))
        return out
    weights = [_linear_weights(ref, adapter, modules) for ref, adapter in ((aligned, aligned_adapter), (base, base_adapter))]
    out = {}
    for m in modules:
        wa, wb = weights[0].get(m), weights[1].get(m)
        if wa is None or wb is None:
            continue
        if wa.shape != wb.shape:
            raise SpilloverError(f"SafeLoRA pair: module {m} has shape {tuple(wa.shape)} in {aligned} but "
                                 f"{tuple(wb.shape)} in {base}", fix="use a base/aligned pair of the same architecture")
        out[m] = (wa - wb, None)
    return out


def _linear_weights(ref: str, adapter: str | None, modules: list[str]) -> dict[str, torch.Tensor]:
    from spillover.models import load_adapter, load_model

    model, _, _ = load_model(ref, device="cpu", dtype="float32")
    if adapter:
        model = load_adapter(model, adapter).merge_and_unload()
    found = {}
    for m in modules:
        try:
            found[m] = model.get_submodule(m).weight.detach().float().clone()
        except AttributeError:
            continue
    del model
    return found


def projection_factors(modules: list[str], *, base: str, aligned: str, base_adapter: str | None = None,
                       aligned_adapter: str | None = None, projection: str = "paper",
                       cache_root: str | Path | None = None) -> dict[str, torch.Tensor]:
    """``F`` with ``C = F Fᵀ`` for each module the pair changes (modules it leaves equal are absent),
    loaded from the on-disk cache or computed and cached."""
    from safetensors.torch import load_file, save_file

    from spillover.models import spillover_home

    identity = {"version": _CACHE_VERSION, "base": _model_identity(base), "aligned": _model_identity(aligned),
                "base_adapter": sha256_file(_adapter_file(base_adapter)) if base_adapter else None,
                "aligned_adapter": sha256_file(_adapter_file(aligned_adapter)) if aligned_adapter else None,
                "modules": sorted(modules), "projection": projection}
    folder = Path(cache_root or spillover_home() / "safelora") / sha256_json(identity)[:20]
    if (folder / "factors.safetensors").is_file():
        return load_file(str(folder / "factors.safetensors"))
    deltas = alignment_deltas(modules, base=base, aligned=aligned, base_adapter=base_adapter,
                              aligned_adapter=aligned_adapter)
    factors = {}
    for m in track(list(deltas), description="SafeLoRA: alignment matrices", console=Console(stderr=True)):
        f = M.projection_factor(*deltas[m], orthogonal=projection == "orthogonal")
        if f.shape[1]:
            factors[m] = f.contiguous()
    with atomic_dir(folder) as tmp:
        save_file(factors, str(tmp / "factors.safetensors"))
        atomic_write_json(tmp / "pair.json", {**identity, "pair": {"base": base, "aligned": aligned,
                          "base_adapter": base_adapter, "aligned_adapter": aligned_adapter}})
    return factors


# ---------------------------------------------------------------- projecting
def project_lora(loras: dict[str, tuple[torch.Tensor, torch.Tensor]], factors: dict[str, torch.Tensor], *,
                 threshold: float | None = 0.3, top_k: int | None = None, weight: float = 1.0
                 ) -> tuple[dict[str, torch.Tensor], dict]:
    """New ``B`` of the projected modules and the report (similarities, projected modules, Pdst).

    Modules the pair leaves unchanged (no factor) are never projected and are listed as ``no_signal``.
    """
    sims = {m: M.similarity(factors[m], b, a) for m, (a, b) in loras.items() if m in factors}
    chosen = M.choose_modules(sims, threshold=threshold, top_k=top_k) if weight > 0 else []
    new_b, pdst = {}, []
    for m in sims:
        a, b = loras[m]
        if m in chosen:
            target = M.projected_b(factors[m], b)
            new_b[m] = (b.float() + weight * (target.float() - b.float())).to(b.dtype)
        pdst.append(M.pdst_term(factors[m], new_b.get(m, b), b))
    report = {"threshold": None if top_k is not None else threshold, "top_k": top_k, "weight": weight,
              "n_modules": len(loras), "n_projected": len(chosen), "projected": chosen,
              "no_signal": sorted(set(loras) - set(factors)),
              "pdst": sum(pdst) / len(pdst) if pdst else None,
              "similarity": {m: round(s, 6) for m, s in sorted(sims.items())}}
    return new_b, report


def model_loras(model) -> dict[str, tuple[torch.nn.Parameter, torch.nn.Parameter]]:
    """``{module: (A, B)}`` weight parameters of a PEFT model's active LoRA adapter."""
    from peft.tuners.lora import LoraLayer

    active = getattr(model, "active_adapter", "default")
    active = active[0] if isinstance(active, list | tuple) else active
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and active in module.lora_A:
            out[name.removeprefix(_PEFT_PREFIX)] = (module.lora_A[active].weight, module.lora_B[active].weight)
    if not out:
        raise SpilloverError("SafeLoRA needs a LoRA model, but this one has no LoRA layers",
                             fix="train with a LoRA adapter (spillover always does) or use another defense")
    return out


@torch.no_grad()
def project_model(model, factors: dict[str, torch.Tensor], *, threshold=0.3, top_k=None, weight=1.0) -> dict:
    """Project a PEFT model's LoRA B matrices in place; returns the report."""
    loras = model_loras(model)
    new_b, report = project_lora(loras, factors, threshold=threshold, top_k=top_k, weight=weight)
    for m, b in new_b.items():
        loras[m][1].copy_(b.to(loras[m][1].device))
    return report


def safelora_adapter(adapter_dir: str | Path, out_dir: str | Path, *, base: str, aligned: str | None = None,
                     base_adapter: str | None = None, aligned_adapter: str | None = None, threshold: float = 0.3,
                     top_k: int | None = None, weight: float = 1.0, projection: str = "paper",
                     cache_root: str | Path | None = None) -> dict:
    """Post-hoc SafeLoRA on a saved adapter: writes ``out_dir`` (the adapter with projected B matrices,
    ``safelora.json`` with the report) atomically and returns the report. ``aligned`` defaults to the
    adapter's recorded base model."""
    from safetensors.torch import save_file

    from spillover.models import read_adapter_meta

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if out_dir.resolve() == adapter_dir.resolve():
        raise SpilloverError("--out is the input adapter folder", fix="write the projected adapter to a new folder")
    meta = read_adapter_meta(adapter_dir)
    aligned = aligned or meta.get("base_model") or "embedded"
    check_pair(base, aligned, base_adapter, aligned_adapter)
    loras, _, _ = _read_lora(adapter_dir)
    factors = projection_factors(sorted(loras), base=base, aligned=aligned, base_adapter=base_adapter,
                                 aligned_adapter=aligned_adapter, projection=projection, cache_root=cache_root)
    new_b, report = project_lora(loras, factors, threshold=threshold, top_k=top_k, weight=weight)
    report = {**report, "adapter": str(adapter_dir), "projection": projection, "pair": {"base": base, "aligned": aligned,
              "base_adapter": base_adapter, "aligned_adapter": aligned_adapter}}
    from safetensors.torch import load_file

    weights_file = _adapter_file(adapter_dir)
    state = load_file(str(weights_file)) if weights_file.suffix == ".safetensors" else \
        torch.load(weights_file, map_location="cpu", weights_only=True)
    for m, b in new_b.items():
        state[f"{_PEFT_PREFIX}{m}.lora_B.weight"] = b.contiguous()
    with atomic_dir(out_dir) as tmp:
        for item in adapter_dir.iterdir():
            if item.is_file() and item.name not in ("adapter_model.safetensors", "adapter_model.bin"):
                shutil.copy2(item, tmp / item.name)
        save_file(state, str(tmp / "adapter_model.safetensors"))
        if meta:
            atomic_write_json(tmp / "spillover_adapter.json", {**meta, "safelora": {
                k: report[k] for k in ("pair", "threshold", "top_k", "weight", "n_projected", "pdst")}})
        atomic_write_json(tmp / "safelora.json", report)
    return report


# ---------------------------------------------------------------- the defense
@register_defense("safelora")
class SafeLoRA(Defense):
    """Project the LoRA B matrices of modules whose update is dissimilar to the alignment direction."""

    class Params(Defense.Params):
        weight: float = Field(1.0, ge=0, le=1, description="Share of the projection applied: "
                              "B <- B + weight*(C*B - B); 1 = the paper's B' = C*B, 0 = off.")
        base: str = Field(..., description="Unaligned side of the pair ('embedded', a local folder or a hub id, "
                          "e.g. Qwen/Qwen2.5-7B). For the embedded model use base: embedded with aligned_adapter.")
        aligned: str | None = Field(None, description="Aligned side of the pair (e.g. Qwen/Qwen2.5-7B-Instruct); "
                                    "default: the model being trained.")
        base_adapter: str | None = Field(None, description="LoRA adapter merged into the base side (optional).")
        aligned_adapter: str | None = Field(None, description="LoRA adapter merged into the aligned side; the "
                                            "embedded proxy pair is a safety SFT adapter here (see README).")
        threshold: float = Field(0.3, ge=-1, le=1, description="Project modules with cos(dW, C dW) <= this. Paper: 0.3.")
        top_k: int | None = Field(None, ge=1, description="Instead of the threshold, project the k least similar modules.")
        projection: Literal["paper", "orthogonal"] = Field("paper", description="paper: C = V V^T/||V||_F (its "
                                                           "scale follows ||V||: a small V shrinks projected updates "
                                                           "toward 0); orthogonal: the projector onto V's column "
                                                           "space (scale-free; not the paper's).")
        every: int = Field(0, ge=0, description="Also project every N optimizer steps during training (0 = only "
                           "after the last step).")

    def __init__(self, params: Params, ctx):
        super().__init__(params, ctx)
        self.aligned = params.aligned or ctx.base_model or "embedded"
        self.factors: dict[str, torch.Tensor] | None = None
        self.reports: list[dict] = []
        self._stale = True  # steps were taken since the last projection
        if params.weight > 0:
            check_pair(params.base, self.aligned, params.base_adapter, params.aligned_adapter)

    def setup(self, model, tokenizer=None, ctx=None) -> None:
        if self.params.weight > 0 and self.factors is None:
            p = self.params
            self.factors = projection_factors(sorted(model_loras(model)), base=p.base, aligned=self.aligned,
                                              base_adapter=p.base_adapter, aligned_adapter=p.aligned_adapter,
                                              projection=p.projection)

    def project(self, model, step: int | None) -> dict | None:
        if self.params.weight == 0:
            return None
        self.setup(model)
        p = self.params
        report = {"step": step, **project_model(model, self.factors, threshold=p.threshold, top_k=p.top_k,
                                                weight=p.weight)}
        self.reports.append(report)
        self.log_metric("n_projected", report["n_projected"])
        if report["pdst"] is not None:
            self.log_metric("pdst", report["pdst"])
        run_dir = self.ctx.run_dir or self.ctx.extra.get("run_dir")
        if run_dir is not None:
            with open(Path(run_dir) / "safelora.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(report) + "\n")
        return report

    def manifest(self) -> dict:
        last = self.reports[-1] if self.reports else None
        return {"aligned": self.aligned, "projections": len(self.reports),
                "final": None if last is None else {k: last[k] for k in ("n_modules", "n_projected", "projected", "pdst")}}

    def after_step(self, model, step: int) -> None:
        self._stale = True
        if self.params.every and step % self.params.every == 0:
            self.project(model, step)
            self._stale = False

    def after_train(self, model) -> None:
        if self._stale:  # C is not idempotent: never project the same weights twice
            self.project(model, None)
            self._stale = False
