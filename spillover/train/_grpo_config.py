"""The GRPO training config: what `spillover train grpo` reads; YAML keys and CLI flags share these names.

Batch mapping (TRL's): ``batch_size`` counts *completions* per micro-batch. Each optimizer step samples
one generation batch of ``batch_size x grad_accum`` completions, i.e. ``batch_size x grad_accum /
num_generations`` prompts with ``num_generations`` completions each, so that product must be a multiple
of ``num_generations`` (a group may span micro-batches). Defaults: 4 x 1 completions = 1 prompt x 4.

The paper recipe (7-14B models) is ``lr: 5e-6``, ``num_generations: 4``, ``temperature: 0.8``,
``top_p: 0.9``, ``beta: 0``, ``lora: {rslora: true, r: 32, alpha: 64}``, started from a warm-up SFT
adapter (``init_adapter``). The optimiser defaults stay those of :class:`OptimSpec` (sized for the
embedded 135M model); set ``lr: 5e-6`` to follow the paper.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_serializer, model_validator

from spillover.defenses import DefenseRef
from spillover.models import LoraSpec
from spillover.rewards import RewardRef
from spillover.train._config import ModelSpec, OptimSpec

#: TRL 1.16 loss types usable here ('luspo' needs sequence-level importance sampling, not exposed).
LossType = Literal["dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo", "vespo"]


#: Settings added after experiments had been trained, left out of dumps (config.yaml, stage hashes) at these
#: default values: a run or experiment that predates them keeps its config text and train-stage hash.
OMITTED_AT_DEFAULT = {"rollout_dtype": "model"}


def omit_new_defaults(data: dict) -> dict:
    """``data`` without the :data:`OMITTED_AT_DEFAULT` keys that hold their default value."""
    return {k: v for k, v in data.items() if k not in OMITTED_AT_DEFAULT or v != OMITTED_AT_DEFAULT[k]}


class GRPOConfig(ModelSpec, OptimSpec):
    """Everything `spillover train grpo` needs; the run directory keeps the resolved copy."""

    prompts: str = Field(..., description="Prompts: chat JSONL (messages ending in a user turn; a final assistant "
                         "turn is dropped) or prompt/completion JSONL (the completion is ignored), or bundled:NAME.")
    rewards: list[RewardRef] = Field(..., min_length=1, description="Reward functions, each {name, weight, <params>}; "
                                     "GRPO optimises the weighted sum (`spillover rewards list`).")
    num_generations: int = Field(4, ge=2, description="Completions per prompt: the group whose rewards are "
                                 "normalised into advantages. Step time grows linearly with it. Paper: 4.")
    beta: float = Field(0.0, ge=0, description="KL coefficient to the starting policy (0 = no reference "
                        "forward pass, faster; KL is logged only when > 0). Paper: 0.")
    loss_type: LossType = Field("dapo", description="TRL's GRPO loss aggregation: dapo (TRL's default: tokens "
                                "normalised over the batch), grpo (per sequence, length-biased), dr_grpo, bnpo, "
                                "cispo, sapo, vespo.")
    temperature: float = Field(0.8, gt=0, description="Sampling temperature of the completions. Paper: 0.8.")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling mass of the completions. Paper: 0.9.")
    max_prompt_length: int | None = Field(512, ge=1, description="Longest prompt in tokens (chat template and system "
                                          "prompt included); a longer prompt is an error naming its line, never "
                                          "silently cut. null = no limit.")
    max_completion_length: int = Field(96, ge=1, description="Tokens generated per completion; generation time "
                                       "grows linearly with it.")
    merge_rollout_adapter: Literal["auto", "on", "off"] = Field(
        "auto", description="Fold the LoRA adapter into the base weights while completions are generated (one "
        "matmul per adapted linear instead of three; see bench/bench_grpo.py --compare for the speed-up), then put "
        "the exact base weights back. auto = on for CPU, off on GPU (it holds a second copy of the adapted weights "
        "meanwhile). The same completions as unmerged for a given seed in fp32 (up to rounding), except that LoRA "
        "dropout (if set) is not applied to rollouts.")
    rollout_dtype: Literal["model", "bfloat16"] = Field(
        "model", description="Weights' dtype while completions are generated. model = the trained weights as they "
        "are (fp32 on CPU). bfloat16 = a bf16 copy of the (merged) policy samples the completions, then the exact "
        "weights are put back: loss, log-probs, KL and every defense stay in the model's dtype. Faster only where "
        "bf16 matmuls are (GPUs; CPUs with AVX512-BF16 or AMX): on an AVX2-only CPU it is slower than fp32 "
        "(bench/bench_grpo.py --rollouts measures both). Cost: the rollouts are slightly off-policy (the bench "
        "reports the mean |delta log-prob| of the sampled tokens, about 0.05 on the embedded model) and no "
        "importance-sampling correction is applied (TRL 1.16 has one for vLLM rollouts only). Changes results, so "
        "it is part of the train-stage hash.")
    system_prompt: str | None = Field(None, description="System message put first in every training prompt (e.g. "
                                      "asking to reason inside <think>...</think>); a prompt's own system message "
                                      "follows it after a blank line.")
    strip_qwen3_markers: bool = Field(False, description="Remove ' /no_think' suffixes and empty <think></think> "
                                      "blocks from the prompts (public EM datasets carry them).")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA adapter settings (ignored with init_adapter).")
    init_adapter: str | None = Field(None, description="Continue training this adapter (e.g. a warm-up SFT run's "
                                     "RUN/adapter) instead of a fresh one: the paper's recipe.")
    defenses: list[DefenseRef] = Field(default_factory=list, description="In-training defenses, applied in order.")
    log_completions_every: int = Field(1, ge=0, description="Write sampled completions with their rewards and "
                                       "sub-scores to completions.jsonl at logging steps that are multiples of "
                                       "this (0 = never).")
    log_completions_samples: int = Field(4, ge=1, description="Completions written per such step (the first ones "
                                         "of the last generation batch, whole groups first).")

    @model_serializer(mode="wrap")
    def _omit_new_defaults(self, handler):
        data = handler(self)
        return omit_new_defaults(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _check_generation_batch(self):
        per_step = self.batch_size * self.grad_accum
        if per_step % self.num_generations:
            raise ValueError(
                f"batch_size x grad_accum = {self.batch_size} x {self.grad_accum} = {per_step} completions per "
                f"optimizer step is not a multiple of num_generations = {self.num_generations} (GRPO samples whole "
                f"groups); fix: set batch_size x grad_accum to a multiple of {self.num_generations}, e.g. "
                f"batch_size: {self.num_generations} for one prompt x {self.num_generations} completions per step")
        return self
