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

from pydantic import Field, ValidationInfo, field_validator, model_serializer, model_validator

from spillover.defenses import Defense, DefenseRef, get_defense
from spillover.models import LoraSpec
from spillover.rewards import RewardRef
from spillover.train._config import ModelSpec, OptimSpec

#: TRL 1.16 loss types usable here ('luspo' needs sequence-level importance sampling, not exposed).
LossType = Literal["dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo", "vespo"]


#: Settings added after experiments had been trained, left out of dumps (config.yaml, stage hashes) at these
#: default values: a run or experiment that predates them keeps its config text and train-stage hash.
OMITTED_AT_DEFAULT = {"rollout_dtype": "model", "rollout_engine": "hf", "vllm_mode": "colocate",
                      "vllm_gpu_memory_utilization": 0.3, "vllm_server_url": None}

#: The settings that only mean something with ``rollout_engine: vllm``.
VLLM_SETTINGS = ("vllm_mode", "vllm_gpu_memory_utilization", "vllm_server_url")


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
        "dropout (if set) is not applied to rollouts. HF rollouts only (rollout_engine: hf).")
    rollout_dtype: Literal["model", "bfloat16"] = Field(
        "model", description="Weights' dtype while completions are generated. model = the trained weights as they "
        "are (fp32 on CPU). bfloat16 = a bf16 copy of the (merged) policy samples the completions, then the exact "
        "weights are put back: loss, log-probs, KL and every defense stay in the model's dtype. Faster only where "
        "bf16 matmuls are (GPUs; CPUs with AVX512-BF16 or AMX): on an AVX2-only CPU it is slower than fp32 "
        "(bench/bench_grpo.py --rollouts measures both). Cost: the rollouts are slightly off-policy (the bench "
        "reports the mean |delta log-prob| of the sampled tokens, about 0.05 on the embedded model) and no "
        "importance-sampling correction is applied (TRL 1.16 has one for vLLM rollouts only). Changes results, so "
        "it is part of the train-stage hash. HF rollouts only (rollout_engine: hf).")
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
    rollout_engine: Literal["hf", "vllm"] = Field(
        "hf", description="What samples the completions. hf = the trained model's own `generate` (CPU or GPU; "
        "merge_rollout_adapter and rollout_dtype apply to it). vllm = TRL's vLLM integration (`use_vllm`), CUDA "
        "only, with vLLM (TRL 1.16 supports 0.22.0-0.31.0) installed in the training environment: the merged "
        "policy's weights are copied into vLLM once per optimizer step, and TRL's importance-sampling correction "
        "(sequence_mask: each completion's loss is weighted by its trainer/sampler probability ratio, and left "
        "out when that is above 3) corrects for vLLM sampling from slightly different numbers than the trainer "
        "computes; with top_p < 1, vLLM's nucleus-renormalised log-probs are first put back on the full vocabulary "
        "(else every completion would be down-weighted by its tokens' kept mass, trl#6789). Not with the steer "
        "defense or rollout_dtype: bfloat16. Changes results (a different sampler), so it is part of the "
        "train-stage hash. Not yet run on a GPU here (tests/test_grpo_vllm.py runs TRL's vLLM path on CPU with a "
        "stand-in engine).")
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate", description="rollout_engine vllm only. colocate = vLLM runs inside the training process on the "
        "same GPU (vllm_gpu_memory_utilization is its share); server = a separate `trl vllm-serve --model MODEL` "
        "process (its own GPU) at vllm_server_url, weights sent to it over NCCL.")
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="rollout_engine vllm, colocate mode: the share of the GPU's memory vLLM takes "
        "for its weights and KV cache (TRL's default 0.3); the rest is left to training. Server mode: pass "
        "--gpu-memory-utilization to `trl vllm-serve` instead.")
    vllm_server_url: str | None = Field(
        None, description="rollout_engine vllm, server mode: the `trl vllm-serve` server's base URL, e.g. "
        "http://localhost:8000 (default: TRL's, http://0.0.0.0:8000).")

    @field_validator("rollout_engine")
    @classmethod
    def _check_rollout_engine(cls, engine: str, info: ValidationInfo) -> str:
        """Spillover's HF-only rollout hooks cannot act on vLLM's generation: refused, naming the other key."""
        if engine != "vllm":
            return engine
        data = info.data
        if data.get("rollout_dtype") == "bfloat16":
            raise ValueError("rollout_dtype: bfloat16 applies to HF rollouts only (vLLM samples in the dtype it "
                             "loads the checkpoint in; TRL's importance-sampling correction covers the difference); "
                             "fix: remove rollout_dtype, or set rollout_engine: hf")
        if data.get("merge_rollout_adapter") == "on":
            raise ValueError("merge_rollout_adapter: on applies to HF rollouts only (with vLLM the adapter is merged "
                             "into the weights copied to vLLM at every step anyway); fix: remove merge_rollout_adapter")
        if data.get("loss_type") == "vespo":
            raise ValueError("loss_type: vespo with vLLM rollouts needs a token-level importance-sampling mode, which "
                             "spillover does not expose; fix: another loss_type, or rollout_engine: hf")
        for ref in data.get("defenses") or []:
            kind = get_defense(ref.name)
            if ref.weight > 0 and (kind.hooks is not Defense.hooks or kind.rollout_hooks is not Defense.rollout_hooks):
                raise ValueError(
                    f"defense {ref.name!r} changes the model's forward passes, which vLLM's generation does not run "
                    "through; and TRL computes the log-probs that the importance-sampling correction and the loss' "
                    "ratio start from outside the training pass, without the defense, so steered and unsteered "
                    f"probabilities would be mixed; fix: rollout_engine: hf for runs with {ref.name!r}")
        return engine

    @field_validator(*VLLM_SETTINGS)
    @classmethod
    def _only_with_vllm(cls, value, info: ValidationInfo):
        """A vLLM setting away from its default needs rollout_engine vllm, and the mode it applies to."""
        name, data = info.field_name, info.data
        if value == cls.model_fields[name].default or "rollout_engine" not in data:  # engine errors reported alone
            return value
        if data["rollout_engine"] != "vllm":
            raise ValueError(f"{name} applies with rollout_engine: vllm only; fix: set rollout_engine: vllm, or "
                             f"remove {name}")
        mode = data.get("vllm_mode")
        if name == "vllm_gpu_memory_utilization" and mode == "server":
            raise ValueError("vllm_gpu_memory_utilization applies to vllm_mode: colocate only; fix: remove it and "
                             "pass --gpu-memory-utilization to `trl vllm-serve`")
        if name == "vllm_server_url":
            if mode != "server":
                raise ValueError("vllm_server_url applies to vllm_mode: server only; fix: set vllm_mode: server, or "
                                 "remove vllm_server_url")
            if not value.startswith(("http://", "https://")):
                raise ValueError(f"vllm_server_url {value!r} is not an http(s) URL; fix: e.g. http://localhost:8000")
        return value

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
