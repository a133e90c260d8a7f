"""Resolve a model reference to a tokenizer and causal LM.

A reference is one of:
- ``embedded`` (default): the shipped SmolLM2-135M-Instruct (see ``_embedded``);
- a local HF folder (must exist; a missing local-looking path is an error, never a hub lookup);
- a hub id ``org/name`` (real users are online; honours ``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from spillover.errors import SpilloverError
from spillover.models._device import pick_device, pick_dtype
from spillover.models._embedded import EMBEDDED_NAME, ensure_embedded

EMBEDDED = "embedded"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelRef:
    """A resolved reference: what the user wrote, where the weights are, and what kind it is."""

    ref: str
    path: str
    kind: str  # "embedded" | "local" | "hub"

    @property
    def display(self) -> str:
        return EMBEDDED_NAME if self.kind == "embedded" else self.ref


def resolve_model(ref: str | None) -> ModelRef:
    ref = ref or EMBEDDED
    if ref == EMBEDDED:
        return ModelRef(ref, str(ensure_embedded(verify=False)), "embedded")
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SpilloverError(f"{path} is a folder but holds no config.json", fix="point --model at a Hugging Face model folder (config.json, weights, tokenizer)")
        return ModelRef(ref, str(path.resolve()), "local")
    if ref.startswith(("/", ".", "~")) or path.exists() or not _HUB_ID.match(ref):
        raise SpilloverError(f"model folder not found: {ref}",
                             fix="give an existing local folder, a hub id like HuggingFaceTB/SmolLM2-135M-Instruct, or 'embedded'")
    return ModelRef(ref, ref, "hub")


def load_tokenizer(model: ModelRef):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model.path)
    except OSError as e:
        raise SpilloverError(f"could not load the tokenizer of {model.ref}: {e}",
                             fix="check the model id or folder, and network access for hub ids") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        raise SpilloverError(f"{model.ref} has no chat template", fix="use an instruct/chat model, or add a chat_template to its tokenizer_config.json")
    return tok


def load_model(ref: str | ModelRef | None = None, *, device: str | None = None, dtype: str | None = None):
    """Return ``(model, tokenizer, ModelRef)``; the model is in eval mode on the chosen device."""
    from transformers import AutoModelForCausalLM

    model_ref = ref if isinstance(ref, ModelRef) else resolve_model(ref)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_ref.path, dtype=torch_dtype)
    except OSError as e:
        raise SpilloverError(f"could not load model {model_ref.ref}: {e}",
                             fix="check the model id or folder, and network access for hub ids") from None
    model.to(dev).eval()
    return model, load_tokenizer(model_ref), model_ref


# ---------------------------------------------------------------- adapter vs base (checked before loading weights)
_IN_IS_HIDDEN = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "c_attn", "query_key_value", "fc1", "w1")
_LAYER = re.compile(r"\.layers\.(\d+)\.|\.h\.(\d+)\.")


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from a safetensors header (8-byte length + JSON), without reading any weights."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                return {}
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return {}
    return {k: v["shape"] for k, v in header.items() if isinstance(v, dict) and "shape" in v}


def adapter_shape(adapter_dir: str | Path) -> dict:
    """``{"hidden_size", "num_layers"}`` an adapter was trained at, read from its weight file's header
    (values are None when the file does not tell)."""
    shapes = _safetensors_shapes(Path(adapter_dir) / "adapter_model.safetensors")
    hidden = next((shape[1] for key, shape in sorted(shapes.items())
                   if ".lora_A." in key and len(shape) == 2 and any(f".{m}." in key for m in _IN_IS_HIDDEN)), None)
    layers = [int(a or b) for key in shapes for a, b in _LAYER.findall(key)]
    return {"hidden_size": hidden, "num_layers": max(layers) + 1 if layers else None}


def model_shape(ref: ModelRef) -> dict:
    """``{"hidden_size", "num_layers"}`` of a base model from its config alone (no weights)."""
    try:
        if ref.kind == "hub":
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(ref.path).to_dict()
        else:
            cfg = json.loads((Path(ref.path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"hidden_size": None, "num_layers": None}
    cfg = cfg.get("text_config", cfg) if "hidden_size" not in cfg else cfg
    return {"hidden_size": cfg.get("hidden_size") or cfg.get("n_embd"),
            "num_layers": cfg.get("num_hidden_layers") or cfg.get("n_layer")}


def check_adapter_base(adapter_dir: str | Path, model: str | None = None) -> str:
    """The base model to load ``adapter_dir`` on (``model``, else the base the adapter records, else
    ``embedded``), after checking the adapter folder and that its shapes fit that base: an adapter
    trained on another base is an error naming both bases and their hidden sizes, before any weights
    are loaded."""
    from spillover.models._lora import read_adapter_meta

    adapter_dir = Path(adapter_dir)
    if adapter_dir.is_file():
        raise SpilloverError(f"adapter {adapter_dir} is a file", fix="point --adapter at the adapter folder (RUN/adapter)")
    if not adapter_dir.exists():
        raise SpilloverError(f"adapter folder not found: {adapter_dir}", fix="check the path (a run's adapter is RUN/adapter)")
    meta = read_adapter_meta(adapter_dir)
    try:
        peft_cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise SpilloverError(f"{adapter_dir / 'adapter_config.json'} is not readable JSON",
                             fix="point --adapter at a folder written by `spillover train ...` or by PEFT") from None
    recorded = meta.get("base_model") or peft_cfg.get("base_model_name_or_path")
    recorded_name = meta.get("base_model_name") or recorded
    base = model or recorded or EMBEDDED
    ref = resolve_model(base)
    have, want = adapter_shape(adapter_dir), model_shape(ref)
    clash = [k for k in ("hidden_size", "num_layers") if have[k] and want[k] and have[k] != want[k]]
    if clash:
        raise SpilloverError(
            f"adapter {adapter_dir} was trained on {recorded_name or 'another model'} (hidden size {have['hidden_size']}, "
            f"{have['num_layers']} layers), not on {ref.display} (hidden size {want['hidden_size']}, "
            f"{want['num_layers']} layers)",
            fix=(f"drop --model to use the adapter's own base ({recorded}), or " if recorded and model else "")
            + "use an adapter trained on this base model")
    return base
