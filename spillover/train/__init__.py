"""Training stage: LoRA SFT (TRL SFTTrainer) and GRPO (TRL GRPOTrainer), with defenses plugged in through one mixin."""

from spillover.train._config import ModelSpec, OptimSpec, SFTConfig
from spillover.train._defended import DefendedTrainerMixin
from spillover.train._grpo_config import GRPOConfig
from spillover.train.grpo import load_grpo_prompts, run_grpo
from spillover.train.sft import TrainResult, run_sft

__all__ = ["DefendedTrainerMixin", "GRPOConfig", "ModelSpec", "OptimSpec", "SFTConfig", "TrainResult", "load_grpo_prompts", "run_grpo", "run_sft"]
