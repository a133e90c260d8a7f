"""Models stage: resolve a reference to tokenizer + causal LM; LoRA adapters; the embedded model;
answer log-probabilities under a model (shared by the probe and the offline judges)."""

from spillover.models._device import pick_device, pick_dtype
from spillover.models._embedded import embedded_status, ensure_embedded
from spillover.models._load import EMBEDDED, ModelRef, load_model, load_tokenizer, resolve_model
from spillover.models._logprob import AnswerSpan, answer_logprobs, answer_span, score_spans
from spillover.models._lora import (
    LoraSpec,
    apply_lora,
    load_adapter,
    merge_adapter,
    read_adapter_meta,
    save_adapter,
)
from spillover.models._paths import spillover_home

__all__ = [
    "AnswerSpan", "answer_logprobs", "answer_span", "score_spans",
    "EMBEDDED", "LoraSpec", "ModelRef", "apply_lora", "embedded_status", "ensure_embedded", "load_adapter",
    "load_model", "load_tokenizer", "merge_adapter", "pick_device", "pick_dtype", "read_adapter_meta",
    "resolve_model", "save_adapter", "spillover_home",
]
