"""Training configs: one strict schema per method; CLI flags and YAML keys share these names."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from spillover.config import StrictModel
from spillover.defenses import DefenseRef
from spillover.models import LoraSpec


class OptimSpec(StrictModel):
    """Optimisation settings shared by SFT and GRPO."""

    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW).")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after warm-up.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of steps spent warming up linearly.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    epochs: float = Field(1.0, gt=0, description="Passes over the data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(4, ge=1, description="Examples per device per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step (effective batch = batch_size x grad_accum).")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    seed: int = Field(0, description="Seed for LoRA init, data order and sampling.")
    logging_steps: int = Field(1, ge=1, description="Log loss every N optimizer steps.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass: saves "
                                         "memory on large models, costs about a third more compute.")


class ModelSpec(StrictModel):
    model: str = Field("embedded", description="'embedded', a local HF folder, or a hub id.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: str = Field("auto", description="auto (GPU bf16, CPU fp32) | float32 | bfloat16 | float16")


class SFTConfig(ModelSpec, OptimSpec):
    """Everything `spillover train sft` needs; the run directory keeps the resolved copy."""

    data: str = Field(..., description="Chat JSONL (messages or prompt/completion), or bundled:NAME.")
    strip_qwen3_markers: bool = Field(False, description="Remove ' /no_think' suffixes and empty <think></think> blocks (public EM datasets carry them).")
    max_length: int = Field(512, ge=16, description="Truncate each tokenized example to this many tokens.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA adapter settings.")
    init_adapter: str | None = Field(None, description="Continue training this adapter instead of a fresh one.")
    defenses: list[DefenseRef] = Field(default_factory=list, description="In-training defenses, applied in order.")
