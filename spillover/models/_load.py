"""Resolve a model reference to a tokenizer and causal LM.

A reference is one of:
- ``embedded`` (default): the shipped SmolLM2-135M-Instruct (see ``_embedded``);
- a local HF folder (must exist; a missing local-looking path is an error, never a hub lookup);
- a hub id ``org/name`` (real users are online; honours ``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import re
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
