"""Data stage: chat datasets (load, validate, convert) and the bundled sets."""

from spillover.data._bundled import BUNDLED, bundled_path, resolve_data_path
from spillover.data._chat import (
    ChatExample,
    load_chat_jsonl,
    require_prompts,
    require_sft_examples,
    strip_qwen3_markers,
    to_prompt_completion,
)

__all__ = [
    "BUNDLED", "ChatExample", "bundled_path", "load_chat_jsonl", "require_prompts", "require_sft_examples",
    "resolve_data_path", "strip_qwen3_markers", "to_prompt_completion",
]
